//! SCRAM users for SASL tests: AlterUserScramCredentials as an admin
//! client sends it (the salted password computed here, as Kafka's admin
//! client does), over Sluice's internal client.

use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use kafka_protocol::messages::AlterUserScramCredentialsRequest;
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::protocol::StrBytes;
use sluice_client::Connection;

/// AlterUserScramCredentials' code for SCRAM-SHA-256.
pub const SCRAM_SHA_256: i8 = 1;
/// AlterUserScramCredentials' code for SCRAM-SHA-512.
pub const SCRAM_SHA_512: i8 = 2;

/// Sets `user`'s `password` for the SCRAM mechanism `code` (4096
/// iterations, a fixed salt: tests need no secrecy).
pub async fn set_password(conn: &Connection, user: &str, password: &str, code: i8) -> Result<()> {
    let salt = format!("salt-of-{user}").into_bytes();
    let iterations = 4096;
    let (algorithm, len) = match code {
        SCRAM_SHA_256 => (ring::pbkdf2::PBKDF2_HMAC_SHA256, 32),
        _ => (ring::pbkdf2::PBKDF2_HMAC_SHA512, 64),
    };
    let mut salted = vec![0u8; len];
    ring::pbkdf2::derive(
        algorithm,
        NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let mut upsert = ScramCredentialUpsertion::default();
    upsert.name = StrBytes::from_string(user.to_string());
    upsert.mechanism = code;
    upsert.iterations = iterations as i32;
    upsert.salt = Bytes::from(salt);
    upsert.salted_password = Bytes::from(salted);
    let mut req = AlterUserScramCredentialsRequest::default();
    req.upsertions.push(upsert);
    let resp = conn.send(&req, 0, Duration::from_secs(15)).await?;
    for r in resp.results {
        if r.error_code != 0 {
            bail!(
                "AlterUserScramCredentials({}): error {} {:?}",
                r.user.as_str(),
                r.error_code,
                r.error_message.as_ref().map(|m| m.as_str())
            );
        }
    }
    Ok(())
}

/// Authenticates `conn` (on a SASL listener) as `user` with PLAIN.
pub async fn login_plain(conn: &Connection, user: &str, password: &str) -> Result<()> {
    let credentials = sluice_client::sasl::Credentials {
        mechanism: sluice_client::sasl::Mechanism::Plain,
        username: user.to_string(),
        password: password.to_string(),
    };
    sluice_client::sasl::authenticate(conn, &credentials, Duration::from_secs(10)).await?;
    Ok(())
}

/// One ACL to create: (resource type code, name, pattern code, principal,
/// operation code, permission code), host `*`.
pub type Acl<'a> = (i8, &'a str, i8, &'a str, i8, i8);

/// Creates ACLs; fails on any per-ACL error.
pub async fn create_acls(conn: &Connection, acls: &[Acl<'_>]) -> Result<()> {
    use kafka_protocol::messages::CreateAclsRequest;
    use kafka_protocol::messages::create_acls_request::AclCreation;
    let mut req = CreateAclsRequest::default();
    for (rt, name, pattern, principal, op, permission) in acls {
        let mut c = AclCreation::default();
        c.resource_type = *rt;
        c.resource_name = StrBytes::from_string(name.to_string());
        c.resource_pattern_type = *pattern;
        c.principal = StrBytes::from_string(principal.to_string());
        c.host = StrBytes::from_static_str("*");
        c.operation = *op;
        c.permission_type = *permission;
        req.creations.push(c);
    }
    let resp = conn.send(&req, 3, Duration::from_secs(15)).await?;
    for (i, r) in resp.results.iter().enumerate() {
        if r.error_code != 0 {
            bail!(
                "CreateAcls #{i}: error {} {:?}",
                r.error_code,
                r.error_message.as_ref().map(|m| m.as_str())
            );
        }
    }
    Ok(())
}

/// Kafka's ACL wire codes, for [`Acl`].
pub mod codes {
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}
