//! SASL login of a connection, as Kafka clients do it: SaslHandshake v1
//! naming the mechanism, then SaslAuthenticate v2 rounds. PLAIN sends the
//! password (use it over TLS); SCRAM-SHA-256/512 (RFC 5802, RFC 7677)
//! proves the password without sending it and checks the broker's proof
//! in return, so a broker that does not know the credential cannot pass
//! for one that does.

use std::num::NonZeroU32;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

use crate::{ClientError, Connection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    /// Kafka's name (`sasl.mechanism`), e.g. `SCRAM-SHA-512`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(name: &str) -> Option<Mechanism> {
        [
            Mechanism::Plain,
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The broker refused: Kafka error `code` (e.g. 58,
    /// SASL_AUTHENTICATION_FAILED) with its message.
    #[error("{what}: error {code}{}", .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused {
        what: String,
        code: i16,
        message: Option<String>,
    },
    /// The broker's SCRAM messages were malformed, or its proof wrong.
    #[error("SCRAM exchange: {0}")]
    Scram(String),
}

/// Logs `conn` in with `c`; afterwards its requests run as that user.
pub async fn authenticate(
    conn: &Connection,
    c: &Credentials,
    timeout: Duration,
) -> Result<(), SaslError> {
    let mut hs = SaslHandshakeRequest::default();
    hs.mechanism = StrBytes::from_static_str(c.mechanism.name());
    let answer = conn.send(&hs, 1, timeout).await?;
    if answer.error_code != 0 {
        return Err(SaslError::Refused {
            what: format!(
                "SASL mechanism {} (the listener offers {:?})",
                c.mechanism.name(),
                answer
                    .mechanisms
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
            ),
            code: answer.error_code,
            message: None,
        });
    }
    match c.mechanism {
        Mechanism::Plain => {
            let token = format!("\0{}\0{}", c.username, c.password);
            round(conn, token.into_bytes(), timeout).await.map(|_| ())
        }
        Mechanism::ScramSha256 => scram(conn, c, &SHA256, timeout).await,
        Mechanism::ScramSha512 => scram(conn, c, &SHA512, timeout).await,
    }
}

/// One SaslAuthenticate round: the broker's bytes back.
async fn round(conn: &Connection, bytes: Vec<u8>, timeout: Duration) -> Result<Bytes, SaslError> {
    let mut req = SaslAuthenticateRequest::default();
    req.auth_bytes = Bytes::from(bytes);
    let resp = conn.send(&req, 2, timeout).await?;
    if resp.error_code != 0 {
        return Err(SaslError::Refused {
            what: "SASL login".to_string(),
            code: resp.error_code,
            message: resp.error_message.map(|m| m.to_string()),
        });
    }
    Ok(resp.auth_bytes)
}

struct Scram {
    hmac: hmac::Algorithm,
    digest: &'static digest::Algorithm,
    pbkdf2: pbkdf2::Algorithm,
}

static SHA256: Scram = Scram {
    hmac: hmac::HMAC_SHA256,
    digest: &digest::SHA256,
    pbkdf2: pbkdf2::PBKDF2_HMAC_SHA256,
};
static SHA512: Scram = Scram {
    hmac: hmac::HMAC_SHA512,
    digest: &digest::SHA512,
    pbkdf2: pbkdf2::PBKDF2_HMAC_SHA512,
};

fn mac(a: &Scram, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(a.hmac, key), data)
        .as_ref()
        .to_vec()
}

/// `=` and `,` in a SCRAM user name, escaped (RFC 5802 `saslname`).
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// The value of `key=` among a SCRAM message's attributes.
fn attribute(message: &str, key: char) -> Option<&str> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

async fn scram(
    conn: &Connection,
    c: &Credentials,
    a: &Scram,
    timeout: Duration,
) -> Result<(), SaslError> {
    let mut nonce = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SaslError::Scram("no randomness for a nonce".into()))?;
    let client_nonce = B64.encode(nonce);
    let first_bare = format!("n={},r={client_nonce}", saslname(&c.username));
    let server_first = round(conn, format!("n,,{first_bare}").into_bytes(), timeout).await?;
    let server_first = String::from_utf8(server_first.to_vec())
        .map_err(|_| SaslError::Scram("the server-first message is not UTF-8".into()))?;
    let malformed = || SaslError::Scram(format!("malformed server-first message {server_first:?}"));
    let nonce = attribute(&server_first, 'r').ok_or_else(malformed)?;
    if !nonce.starts_with(&client_nonce) || nonce.len() == client_nonce.len() {
        return Err(SaslError::Scram(
            "the broker's nonce does not extend ours".into(),
        ));
    }
    let salt = attribute(&server_first, 's')
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(malformed)?;
    let iterations = attribute(&server_first, 'i')
        .and_then(|i| i.parse::<u32>().ok())
        .and_then(NonZeroU32::new)
        .ok_or_else(malformed)?;
    let mut salted = vec![0u8; a.digest.output_len()];
    pbkdf2::derive(
        a.pbkdf2,
        iterations,
        &salt,
        c.password.as_bytes(),
        &mut salted,
    );
    let client_key = mac(a, &salted, b"Client Key");
    let stored_key = digest::digest(a.digest, &client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let signature = mac(a, stored_key.as_ref(), auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_final = round(
        conn,
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
        timeout,
    )
    .await?;
    let server_final = String::from_utf8_lossy(&server_final).to_string();
    if let Some(e) = attribute(&server_final, 'e') {
        return Err(SaslError::Scram(format!("the broker refused: {e}")));
    }
    let server_key = mac(a, &salted, b"Server Key");
    let expected = B64.encode(mac(a, &server_key, auth_message.as_bytes()));
    match attribute(&server_final, 'v') {
        Some(v) if v == expected => Ok(()),
        _ => Err(SaslError::Scram(
            "the broker's proof is wrong: it does not know this credential".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_attributes() {
        assert_eq!(
            Mechanism::parse("scram-sha-512"),
            Some(Mechanism::ScramSha512)
        );
        assert_eq!(Mechanism::parse("GSSAPI"), None);
        assert_eq!(saslname("a=b,c"), "a=3Db=2Cc");
        let m = "r=abc,s=c2FsdA==,i=4096";
        assert_eq!(attribute(m, 'r'), Some("abc"));
        assert_eq!(attribute(m, 's'), Some("c2FsdA=="));
        assert_eq!(attribute(m, 'x'), None);
    }
}
