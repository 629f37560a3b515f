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
