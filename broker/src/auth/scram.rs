//! The server side of SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677),
//! as Kafka runs it inside SaslAuthenticate: client-first → server-first →
//! client-final → server-final. Also how a credential is derived from a
//! salted password (AlterUserScramCredentials) or checked against a plain
//! password (SASL/PLAIN users share the SCRAM store).
//!
//! An unknown user gets a made-up salt and iteration count and fails only
//! at the proof, with the same error as a wrong password, so an attacker
//! cannot tell which users exist.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2};
use sluice_metadata::scram::{ScramCredential, ScramMechanism};

/// Why an exchange failed; the client is told only that authentication
/// failed (`detail` is for the broker's log).
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ScramError {
    pub detail: String,
}

fn fail(detail: impl Into<String>) -> ScramError {
    ScramError {
        detail: detail.into(),
    }
}

struct Algorithm {
    hmac: hmac::Algorithm,
    digest: &'static digest::Algorithm,
    pbkdf2: pbkdf2::Algorithm,
}

fn algorithm(m: ScramMechanism) -> Algorithm {
    match m {
        ScramMechanism::Sha256 => Algorithm {
            hmac: hmac::HMAC_SHA256,
            digest: &digest::SHA256,
            pbkdf2: pbkdf2::PBKDF2_HMAC_SHA256,
        },
        ScramMechanism::Sha512 => Algorithm {
            hmac: hmac::HMAC_SHA512,
            digest: &digest::SHA512,
            pbkdf2: pbkdf2::PBKDF2_HMAC_SHA512,
        },
    }
}

fn hmac_of(a: &Algorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(a.hmac, key), data)
        .as_ref()
        .to_vec()
}

/// The stored credential for a salted password (`Hi(password, salt, i)`).
pub fn credential_from_salted(
    mechanism: ScramMechanism,
    salt: &[u8],
    salted_password: &[u8],
    iterations: i32,
) -> ScramCredential {
    let a = algorithm(mechanism);
    let client_key = hmac_of(&a, salted_password, b"Client Key");
    ScramCredential {
        salt: salt.to_vec(),
        stored_key: digest::digest(a.digest, &client_key).as_ref().to_vec(),
        server_key: hmac_of(&a, salted_password, b"Server Key"),
        iterations,
    }
}

/// `Hi(password, salt, i)`, RFC 5802's salted password.
pub fn salted_password(
    mechanism: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: i32,
) -> Vec<u8> {
    let a = algorithm(mechanism);
    let mut out = vec![0u8; a.digest.output_len()];
    let rounds = NonZeroU32::new(iterations.max(1) as u32).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(a.pbkdf2, rounds, salt, password, &mut out);
    out
}

/// Does `password` match the credential (SASL/PLAIN against the SCRAM
/// store)?
pub fn password_matches(
    mechanism: ScramMechanism,
    credential: &ScramCredential,
    password: &[u8],
) -> bool {
    let salted = salted_password(mechanism, password, &credential.salt, credential.iterations);
    let derived =
        credential_from_salted(mechanism, &credential.salt, &salted, credential.iterations);
    constant_time_eq(&derived.stored_key, &credential.stored_key)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 5802 `saslname`: `=2C` is `,` and `=3D` is `=`; any other `=` is
/// malformed.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i..i + 3)
            .ok_or_else(|| fail("bad escape in user name"))?;
        out.push(match code {
            "=2C" => ',',
            "=3D" => '=',
            _ => return Err(fail("bad escape in user name")),
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One SCRAM exchange on one connection.
pub struct ScramServer {
    mechanism: ScramMechanism,
    state: State,
}

enum State {
    AwaitingClientFirst,
    AwaitingClientFinal(Box<FirstRound>),
    Finished,
}

/// What the first round established.
struct FirstRound {
    user: String,
    /// The credential, or None for an unknown user (fails at the proof).
    credential: Option<ScramCredential>,
    fake: ScramCredential,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

/// What the server answers one client message with.
pub enum Step {
    /// Send this and wait for the next message.
    Continue(Vec<u8>),
    /// Authenticated as this user; send the server-final message.
    Authenticated { user: String, server_final: Vec<u8> },
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism) -> ScramServer {
        ScramServer {
            mechanism,
            state: State::AwaitingClientFirst,
        }
    }

    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// Takes the next client message. `lookup` finds a user's credential;
    /// `fake` gives a stable made-up one for users that do not exist;
    /// `server_nonce` is fresh randomness (printable, no commas).
    pub fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        fake: impl FnOnce(&str) -> ScramCredential,
        server_nonce: &str,
    ) -> Result<Step, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| fail("message is not UTF-8"))?;
        match std::mem::replace(&mut self.state, State::Finished) {
            State::AwaitingClientFirst => self.client_first(text, lookup, fake, server_nonce),
            State::AwaitingClientFinal(first) => {
                let first = *first;
                let known = first.credential.is_some();
                let credential = first.credential.as_ref().unwrap_or(&first.fake);
                let server_final = self.client_final(text, credential, &first)?;
                if !known {
                    return Err(fail(format!("unknown user '{}'", first.user)));
                }
                Ok(Step::Authenticated {
                    user: first.user,
                    server_final,
                })
            }
            State::Finished => Err(fail("the exchange is already over")),
        }
    }

    fn client_first(
        &mut self,
        text: &str,
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        fake: impl FnOnce(&str) -> ScramCredential,
        server_nonce: &str,
    ) -> Result<Step, ScramError> {
        // gs2-header: "n," or "y," (no channel binding), then an optional
        // "a=authzid", then ",".
        let mut parts = text.splitn(3, ',');
        let cbind = parts.next().unwrap_or_default();
        let authzid = parts.next().ok_or_else(|| fail("client-first too short"))?;
        let bare = parts.next().ok_or_else(|| fail("client-first too short"))?;
        if cbind != "n" && cbind != "y" {
            return Err(fail("channel binding is not supported"));
        }
        let mut user = None;
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(v) = attr.strip_prefix("n=") {
                user = Some(decode_saslname(v)?);
            } else if let Some(v) = attr.strip_prefix("r=") {
                client_nonce = Some(v);
            } else if attr.starts_with("m=") {
                return Err(fail("mandatory extension not supported"));
            }
            // Other extensions (Kafka's tokenauth) are ignored.
        }
        let user = user
            .filter(|u| !u.is_empty())
            .ok_or_else(|| fail("no user name"))?;
        let client_nonce = client_nonce
            .filter(|n| !n.is_empty())
            .ok_or_else(|| fail("no client nonce"))?;
        if let Some(a) = authzid.strip_prefix("a=")
            && decode_saslname(a)? != user
        {
            return Err(fail("authorization id differs from the user name"));
        }
        let credential = lookup(&user);
        let fake = fake(&user);
        let shown = credential.as_ref().unwrap_or(&fake);
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&shown.salt),
            shown.iterations
        );
        self.state = State::AwaitingClientFinal(Box::new(FirstRound {
            user,
            credential,
            fake,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            gs2_header: format!("{cbind},{authzid},"),
        }));
        Ok(Step::Continue(server_first.into_bytes()))
    }

    fn client_final(
        &self,
        text: &str,
        credential: &ScramCredential,
        first: &FirstRound,
    ) -> Result<Vec<u8>, ScramError> {
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| fail("client-final has no proof"))?;
        let mut channel = None;
        let mut final_nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                final_nonce = Some(v);
            }
        }
        if channel != Some(B64.encode(&first.gs2_header).as_str()) {
            return Err(fail("channel binding data does not match"));
        }
        if final_nonce != Some(first.nonce.as_str()) {
            return Err(fail("nonce does not match"));
        }
        let proof = B64.decode(proof).map_err(|_| fail("proof is not base64"))?;
        let a = algorithm(self.mechanism);
        let auth_message = format!(
            "{},{},{without_proof}",
            first.client_first_bare, first.server_first
        );
        let client_signature = hmac_of(&a, &credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(fail("proof has the wrong length"));
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let stored = digest::digest(a.digest, &client_key);
        if !constant_time_eq(stored.as_ref(), &credential.stored_key) {
            return Err(fail("wrong password"));
        }
        let server_signature = hmac_of(&a, &credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange (SCRAM-SHA-256, user "user", password
    /// "pencil").
    #[test]
    fn rfc_7677_exchange() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let salted = salted_password(ScramMechanism::Sha256, b"pencil", &salt, 4096);
        let credential = credential_from_salted(ScramMechanism::Sha256, &salt, &salted, 4096);
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        let first = server
            .step(
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                |u| (u == "user").then(|| credential.clone()),
                |_| unreachable_credential(),
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .expect("client-first");
        let Step::Continue(first) = first else {
            panic!("expected a server-first message");
        };
        assert_eq!(
            String::from_utf8(first).expect("utf8"),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let done = server
            .step(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                |_| None,
                |_| unreachable_credential(),
                "",
            )
            .expect("client-final");
        let Step::Authenticated { user, server_final } = done else {
            panic!("expected authentication");
        };
        assert_eq!(user, "user");
        assert_eq!(
            String::from_utf8(server_final).expect("utf8"),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(password_matches(
            ScramMechanism::Sha256,
            &credential,
            b"pencil"
        ));
        assert!(!password_matches(
            ScramMechanism::Sha256,
            &credential,
            b"pencil2"
        ));
    }

    fn unreachable_credential() -> ScramCredential {
        ScramCredential {
            salt: vec![1; 16],
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
            iterations: 4096,
        }
    }

    #[test]
    fn wrong_proofs_unknown_users_and_garbage_fail() {
        let salt = b"0123456789abcdef".to_vec();
        let salted = salted_password(ScramMechanism::Sha512, b"secret", &salt, 4096);
        let credential = credential_from_salted(ScramMechanism::Sha512, &salt, &salted, 4096);
        // A wrong proof.
        let mut s = ScramServer::new(ScramMechanism::Sha512);
        s.step(
            b"n,,n=alice,r=abc",
            |_| Some(credential.clone()),
            |_| unreachable_credential(),
            "xyz",
        )
        .expect("first");
        let err = s
            .step(
                b"c=biws,r=abcxyz,p=AAAA",
                |_| None,
                |_| unreachable_credential(),
                "",
            )
            .err()
            .expect("refused");
        assert!(err.detail.contains("wrong length") || err.detail.contains("wrong password"));
        // An unknown user gets a server-first like anyone, then fails.
        let mut s = ScramServer::new(ScramMechanism::Sha512);
        let first = s
            .step(
                b"n,,n=mallory,r=abc",
                |_| None,
                |_| unreachable_credential(),
                "xyz",
            )
            .expect("first");
        assert!(matches!(first, Step::Continue(_)));
        // Garbage.
        for bad in [
            &b"hello"[..],
            b"n,,r=abc",
            b"p,,n=u,r=x",
            b"\xff\xfe",
            b"n,,n=a=ZZ,r=x",
        ] {
            let mut s = ScramServer::new(ScramMechanism::Sha256);
            assert!(
                s.step(
                    bad,
                    |_| Some(credential.clone()),
                    |_| unreachable_credential(),
                    "x"
                )
                .is_err(),
                "{bad:?}"
            );
        }
        // Nothing after the end.
        let mut s = ScramServer::new(ScramMechanism::Sha256);
        s.state = State::Finished;
        assert!(
            s.step(b"n,,n=u,r=x", |_| None, |_| unreachable_credential(), "x")
                .is_err()
        );
    }
}
