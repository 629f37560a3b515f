//! Who a Kafka connection is. On a SASL listener a connection must
//! authenticate (SaslHandshake, then SaslAuthenticate with PLAIN or SCRAM)
//! before any other request; elsewhere it is `User:ANONYMOUS`. Credentials
//! are the SCRAM credentials in the metadata image (PLAIN passwords are
//! checked against them too). Failures get one message whatever went
//! wrong, after a delay (Kafka's `connection.failed.authentication.delay.ms`),
//! and are counted.

pub mod authorizer;
pub mod certificate;
pub mod scram;

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts};
use ring::rand::SecureRandom;
use sluice_metadata::image::MetadataImage;
use sluice_metadata::scram::{ScramCredential, ScramMechanism};

use scram::{ScramServer, Step};

/// A SASL mechanism Sluice serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            other => ScramMechanism::from_name(other).map(Mechanism::Scram),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }
}

/// The principal of connections that do not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// Where a connection stands.
pub enum AuthState {
    /// Not a SASL listener: anonymous.
    NotRequired,
    /// Waiting for SaslHandshake.
    AwaitingHandshake,
    /// Handshake done: the next SaslAuthenticate uses this mechanism.
    Handshaken(Mechanism),
    /// In the middle of a SCRAM exchange.
    Scram(ScramServer),
    Authenticated {
        principal: String,
        /// When a SASL session ends unless the client re-authenticates
        /// (KIP-368); `None`: never.
        expires: Option<std::time::Instant>,
    },
    /// Failed: the connection closes after the answer.
    Failed,
}

impl AuthState {
    /// May this connection send requests other than the SASL ones?
    pub fn admits_requests(&self) -> bool {
        match self {
            AuthState::NotRequired => true,
            AuthState::Authenticated { expires, .. } => {
                expires.is_none_or(|e| std::time::Instant::now() < e)
            }
            _ => false,
        }
    }
}

/// The broker's side of authentication: enabled mechanisms, the failure
/// delay, metrics, and a secret that makes unknown users' fake salts
/// stable (so probing a name twice shows nothing).
pub struct Authenticator {
    pub mechanisms: Vec<Mechanism>,
    pub failure_delay: Duration,
    /// How long a SASL session lasts before the client must re-authenticate
    /// (KIP-368's connections.max.reauth.ms); `None`: forever.
    pub session_lifetime: Option<Duration>,
    pub attempts: IntCounterVec,
    secret: [u8; 32],
    rng: ring::rand::SystemRandom,
}

/// What one SaslAuthenticate produced.
pub enum Outcome {
    /// Send these bytes, more to come.
    Continue(Vec<u8>),
    /// Authenticated: send these bytes (maybe empty).
    Done { principal: String, bytes: Vec<u8> },
    /// Refused: the client hears only that authentication failed.
    Failed { detail: String },
}

impl Authenticator {
    pub fn new(
        mechanisms: Vec<Mechanism>,
        failure_delay: Duration,
        session_lifetime: Option<Duration>,
    ) -> anyhow::Result<Authenticator> {
        let rng = ring::rand::SystemRandom::new();
        let mut secret = [0u8; 32];
        rng.fill(&mut secret)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
        Ok(Authenticator {
            mechanisms,
            failure_delay,
            session_lifetime,
            attempts: IntCounterVec::new(
                Opts::new(
                    "sluice_sasl_authentications_total",
                    "SASL authentications by listener, mechanism and result (success, failure).",
                ),
                &["listener", "mechanism", "result"],
            )?,
            secret,
            rng,
        })
    }

    pub fn enabled_names(&self) -> Vec<&'static str> {
        self.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// Runs one SaslAuthenticate token through the connection's state.
    pub fn authenticate(
        &self,
        state: &Mutex<AuthState>,
        image: &MetadataImage,
        token: &[u8],
    ) -> Outcome {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match std::mem::replace(&mut *state, AuthState::Failed) {
            AuthState::Handshaken(Mechanism::Plain) => self.plain(image, token),
            AuthState::Handshaken(Mechanism::Scram(m)) => {
                self.scram_step(ScramServer::new(m), &mut state, image, token)
            }
            AuthState::Scram(server) => self.scram_step(server, &mut state, image, token),
            AuthState::NotRequired | AuthState::AwaitingHandshake => Outcome::Failed {
                detail: "SaslAuthenticate before SaslHandshake".into(),
            },
            AuthState::Authenticated { .. } | AuthState::Failed => Outcome::Failed {
                detail: "SaslAuthenticate after the exchange ended".into(),
            },
        };
        if let Outcome::Done { principal, .. } = &outcome {
            // The session's expiry is set by `Session::sasl_authenticated`.
            *state = AuthState::Authenticated {
                principal: principal.clone(),
                expires: None,
            };
        }
        outcome
    }

    fn scram_step(
        &self,
        mut server: ScramServer,
        state: &mut AuthState,
        image: &MetadataImage,
        token: &[u8],
    ) -> Outcome {
        let mechanism = server.mechanism();
        let lookup = |user: &str| find_credential(image, user, mechanism);
        let fake = |user: &str| self.fake_credential(image, mechanism, user);
        match server.step(token, lookup, fake, &self.nonce()) {
            Ok(Step::Continue(bytes)) => {
                *state = AuthState::Scram(server);
                Outcome::Continue(bytes)
            }
            Ok(Step::Authenticated { user, server_final }) => Outcome::Done {
                principal: format!("User:{user}"),
                bytes: server_final,
            },
            Err(e) => Outcome::Failed { detail: e.detail },
        }
    }

    /// SASL/PLAIN: `[authzid] NUL authcid NUL password`, checked against
    /// the user's SCRAM credential (SHA-512 if it has one, else SHA-256).
    fn plain(&self, image: &MetadataImage, token: &[u8]) -> Outcome {
        let failed = |detail: &str| Outcome::Failed {
            detail: detail.to_string(),
        };
        let mut parts = token.split(|b| *b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return failed("PLAIN token is not authzid NUL user NUL password");
        };
        let Ok(user) = std::str::from_utf8(user) else {
            return failed("PLAIN user name is not UTF-8");
        };
        if user.is_empty() || password.is_empty() {
            return failed("PLAIN user name or password is empty");
        }
        if !authzid.is_empty() && authzid != user.as_bytes() {
            return failed("authorization id differs from the user name");
        }
        let credential = image.scram_credentials.get(user).and_then(|m| {
            m.get(&ScramMechanism::Sha512)
                .map(|c| (ScramMechanism::Sha512, c))
                .or_else(|| {
                    m.get(&ScramMechanism::Sha256)
                        .map(|c| (ScramMechanism::Sha256, c))
                })
        });
        match credential {
            Some((m, c)) if scram::password_matches(m, c, password) => Outcome::Done {
                principal: format!("User:{user}"),
                bytes: Vec::new(),
            },
            Some(_) => failed("wrong password"),
            None => {
                // As long as a real check, so timing does not tell.
                let fake = self.fake_credential(image, ScramMechanism::Sha512, user);
                let _ = scram::password_matches(ScramMechanism::Sha512, &fake, password);
                failed(&format!("unknown user '{user}'"))
            }
        }
    }

    /// A stable made-up credential for a user that does not exist, shaped
    /// like the real ones of that mechanism (iterations, salt length), so
    /// neither the server-first message nor the time spent tells.
    fn fake_credential(
        &self,
        image: &MetadataImage,
        mechanism: ScramMechanism,
        user: &str,
    ) -> ScramCredential {
        let like = image
            .scram_credentials
            .values()
            .find_map(|m| m.get(&mechanism));
        let iterations = like.map_or(ScramMechanism::MIN_ITERATIONS, |c| c.iterations);
        let salt_len = like.map_or(16, |c| c.salt.len()).clamp(1, 64);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, &self.secret);
        let tag = ring::hmac::sign(&key, user.as_bytes());
        let mut random = vec![0u8; 128];
        let _ = self.rng.fill(&mut random);
        ScramCredential {
            salt: tag.as_ref()[..salt_len].to_vec(),
            stored_key: random[..64].to_vec(),
            server_key: random[64..].to_vec(),
            iterations,
        }
    }

    /// 24 random bytes, base64 (printable, no commas).
    fn nonce(&self) -> String {
        use base64::Engine;
        let mut bytes = [0u8; 24];
        let _ = self.rng.fill(&mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

fn find_credential(
    image: &MetadataImage,
    user: &str,
    mechanism: ScramMechanism,
) -> Option<ScramCredential> {
    image
        .scram_credentials
        .get(user)
        .and_then(|m| m.get(&mechanism))
        .cloned()
}
