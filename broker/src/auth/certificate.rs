//! The principal of a TLS client certificate, as Kafka names it with its
//! default `ssl.principal.mapping.rules`: `User:` and the certificate's
//! subject in RFC 2253 form (Java's `X500Principal.getName()`): the last
//! RDN first, `,` between RDNs and `+` inside one, the usual short names
//! (CN, C, L, ST, O, OU, STREET, DC, UID), other attributes as
//! `<dotted OID>=#<hex of the DER value>`, and `,+"\<>;` escaped.

use x509_parser::der_parser::asn1_rs::ToDer;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AttributeTypeAndValue;

/// `User:CN=...`, or `None` if the certificate does not parse.
pub fn principal(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect();
    let name: Vec<&str> = rdns.iter().rev().map(String::as_str).collect();
    Some(format!("User:{}", name.join(",")))
}

fn attribute(a: &AttributeTypeAndValue<'_>) -> String {
    let oid = a.attr_type().to_id_string();
    let short = match oid.as_str() {
        "2.5.4.3" => Some("CN"),
        "2.5.4.6" => Some("C"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.9" => Some("STREET"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        _ => None,
    };
    match (short, a.as_str()) {
        (Some(short), Ok(value)) => format!("{short}={}", escape(value)),
        _ => {
            let der = a.attr_value().to_der_vec().unwrap_or_default();
            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
            format!("{oid}=#{hex}")
        }
    }
}

/// RFC 2253 section 2.4 escaping.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(dn: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn rfc2253_order_names_and_escaping() {
        let der = cert(&[
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "Acme, Inc."),
            (DnType::CommonName, "orders-app"),
        ]);
        assert_eq!(
            principal(&der).as_deref(),
            Some("User:CN=orders-app,O=Acme\\, Inc.,C=DE")
        );
        assert_eq!(
            principal(&cert(&[(DnType::CommonName, " #lead")])).as_deref(),
            Some("User:CN=\\ #lead")
        );
        assert_eq!(principal(b"not a certificate"), None);
    }
}
