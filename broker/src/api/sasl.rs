//! SaslHandshake and SaslAuthenticate (the connection's side of
//! `crate::auth`), and the SCRAM credential APIs (AlterUserScramCredentials,
//! DescribeUserScramCredentials) that manage the users they check.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::{
    AlterUserScramCredentialsResponse, AlterUserScramCredentialsResult,
};
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResponse, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};

use super::services::Admin;
use super::{ChangeFailed, Session, error_code, str_bytes};
use crate::auth::{AuthState, Authenticator, Mechanism, Outcome};
use sluice_metadata::image::{Command, MetadataError};
use sluice_metadata::scram::ScramMechanism;

pub fn handshake(
    auth: &Authenticator,
    session: &Session,
    req: SaslHandshakeRequest,
    metrics: &crate::metrics::Metrics,
) -> SaslHandshakeResponse {
    let mut resp = SaslHandshakeResponse::default();
    resp.mechanisms = auth.enabled_names().into_iter().map(str_bytes).collect();
    let mut state = session.auth.lock().unwrap_or_else(|e| e.into_inner());
    // A SASL session with a lifetime may be renewed on the same connection
    // (KIP-368), with the same mechanism and principal (checked when it
    // completes, as Kafka does).
    let reauthentication = matches!(*state, AuthState::Authenticated { .. })
        && session.sasl
        && auth.session_lifetime.is_some();
    if !matches!(*state, AuthState::AwaitingHandshake) && !reauthentication {
        // Kafka's answer on a listener without SASL, or after the exchange.
        resp.error_code = error_code(metrics, ResponseError::IllegalSaslState);
        return resp;
    }
    match Mechanism::parse(req.mechanism.as_str()).filter(|m| auth.mechanisms.contains(m)) {
        Some(m) => *state = AuthState::Handshaken(m),
        None => {
            tracing::info!(peer = %session.peer, mechanism = %req.mechanism.as_str(), "SASL mechanism not enabled; closing");
            resp.error_code = error_code(metrics, ResponseError::UnsupportedSaslMechanism);
            *state = AuthState::Failed;
        }
    }
    resp
}

pub async fn authenticate(
    auth: &Authenticator,
    image: &sluice_metadata::image::MetadataImage,
    session: &Session,
    req: SaslAuthenticateRequest,
    metrics: &crate::metrics::Metrics,
) -> SaslAuthenticateResponse {
    let mut resp = SaslAuthenticateResponse::default();
    let mechanism = {
        let state = session.auth.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            AuthState::NotRequired | AuthState::Authenticated { .. } => {
                resp.error_code = error_code(metrics, ResponseError::IllegalSaslState);
                resp.error_message = Some(str_bytes(
                    "SaslAuthenticate on a connection that needs no authentication now",
                ));
                return resp;
            }
            AuthState::Handshaken(m) => Some(*m),
            AuthState::Scram(s) => Some(Mechanism::Scram(s.mechanism())),
            AuthState::AwaitingHandshake | AuthState::Failed => None,
        }
    };
    let name = mechanism.map_or("none", Mechanism::name);
    let count = |result: &str| {
        auth.attempts
            .with_label_values(&[&session.listener, name, result])
            .inc();
    };
    // PBKDF2 (PLAIN) costs milliseconds: off the async workers.
    let outcome =
        tokio::task::block_in_place(|| auth.authenticate(&session.auth, image, &req.auth_bytes));
    match outcome {
        Outcome::Continue(bytes) => resp.auth_bytes = bytes.into(),
        Outcome::Done { principal, bytes } => {
            let session_started = match mechanism {
                Some(m) => session.sasl_authenticated(principal.clone(), m, auth.session_lifetime),
                None => {
                    session.sasl_failed();
                    Err("no mechanism".to_string())
                }
            };
            match session_started {
                Ok(()) => {
                    count("success");
                    tracing::debug!(peer = %session.peer, %principal, mechanism = name, "authenticated");
                    resp.auth_bytes = bytes.into();
                    // Only v1+ carries it: the client re-authenticates
                    // before it runs out (KIP-368).
                    resp.session_lifetime_ms = auth
                        .session_lifetime
                        .map_or(0, |l| i64::try_from(l.as_millis()).unwrap_or(i64::MAX));
                }
                Err(detail) => {
                    count("failure");
                    tracing::info!(peer = %session.peer, listener = %session.listener, reason = %detail, "SASL re-authentication refused; closing");
                    resp.error_code = error_code(metrics, ResponseError::SaslAuthenticationFailed);
                    resp.error_message = Some(str_bytes(detail));
                }
            }
        }
        Outcome::Failed { detail } => {
            count("failure");
            tracing::info!(peer = %session.peer, listener = %session.listener, mechanism = name, reason = %detail, "SASL authentication failed; closing");
            // Slows down guessing; the connection closes after the answer.
            tokio::time::sleep(auth.failure_delay).await;
            resp.error_code = error_code(metrics, ResponseError::SaslAuthenticationFailed);
            resp.error_message = Some(str_bytes(format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {name}"
            )));
        }
    }
    resp
}

/// What one user's part of an AlterUserScramCredentials request asks.
enum Change {
    Upsert(ScramMechanism, sluice_metadata::scram::ScramCredential),
    Delete(ScramMechanism),
}

pub async fn alter_user_scram_credentials(
    b: &Admin<'_>,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    // Per user: the changes, or the first reason the user's part is refused.
    let mut per_user: BTreeMap<String, Result<Vec<Change>, (ResponseError, String)>> =
        BTreeMap::new();
    let mut seen: BTreeSet<(String, i8)> = BTreeSet::new();
    let changes = req
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), d.mechanism, None))
        .chain(
            req.upsertions
                .iter()
                .map(|u| (u.name.to_string(), u.mechanism, Some(u))),
        );
    for (user, code, upsert) in changes {
        let checked = check_change(&user, code, upsert, &mut seen);
        let entry = per_user.entry(user).or_insert_with(|| Ok(Vec::new()));
        match (entry.as_mut(), checked) {
            (Ok(list), Ok(change)) => list.push(change),
            (Ok(_), Err(e)) => *entry = Err(e),
            (Err(_), _) => {}
        }
    }
    let mut resp = AlterUserScramCredentialsResponse::default();
    for (user, outcome) in per_user {
        let mut result = AlterUserScramCredentialsResult::default();
        result.user = str_bytes(user.clone());
        let applied = match outcome {
            Err(e) => Err(e),
            Ok(changes) => apply(b, &user, changes).await,
        };
        if let Err((code, message)) = applied {
            result.error_code = error_code(b.metrics, code);
            result.error_message = Some(str_bytes(message));
        }
        resp.results.push(result);
    }
    resp
}

fn check_change(
    user: &str,
    code: i8,
    upsert: Option<
        &kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion,
    >,
    seen: &mut BTreeSet<(String, i8)>,
) -> Result<Change, (ResponseError, String)> {
    if user.is_empty() {
        return Err((
            ResponseError::UnacceptableCredential,
            "Username must not be empty".into(),
        ));
    }
    if !seen.insert((user.to_string(), code)) {
        return Err((
            ResponseError::DuplicateResource,
            format!("user '{user}' appears more than once for one mechanism"),
        ));
    }
    let mechanism = ScramMechanism::from_code(code).ok_or_else(|| {
        (
            ResponseError::UnsupportedSaslMechanism,
            format!("unknown SCRAM mechanism {code}"),
        )
    })?;
    let Some(u) = upsert else {
        return Ok(Change::Delete(mechanism));
    };
    if u.iterations < ScramMechanism::MIN_ITERATIONS
        || u.iterations > ScramMechanism::MAX_ITERATIONS
    {
        return Err((
            ResponseError::UnacceptableCredential,
            format!(
                "iterations {} is outside {}..={}",
                u.iterations,
                ScramMechanism::MIN_ITERATIONS,
                ScramMechanism::MAX_ITERATIONS
            ),
        ));
    }
    if u.salt.is_empty() || u.salted_password.is_empty() {
        return Err((
            ResponseError::UnacceptableCredential,
            "salt and salted password must not be empty".into(),
        ));
    }
    Ok(Change::Upsert(
        mechanism,
        crate::auth::scram::credential_from_salted(
            mechanism,
            &u.salt,
            &u.salted_password,
            u.iterations,
        ),
    ))
}

/// Commits one user's changes, in order; the first failure stops.
async fn apply(
    b: &Admin<'_>,
    user: &str,
    changes: Vec<Change>,
) -> Result<(), (ResponseError, String)> {
    for change in changes {
        let command = match change {
            Change::Upsert(mechanism, credential) => Command::UpsertScramCredential {
                user: user.to_string(),
                mechanism,
                credential,
            },
            Change::Delete(mechanism) => Command::DeleteScramCredential {
                user: user.to_string(),
                mechanism,
            },
        };
        match super::change_metadata(b, command).await {
            Ok(_) => {}
            Err(ChangeFailed::Refused(MetadataError::ResourceNotFound(m))) => {
                return Err((ResponseError::ResourceNotFound, m));
            }
            Err(ChangeFailed::Refused(e)) => {
                return Err((ResponseError::UnknownServerError, e.to_string()));
            }
            Err(ChangeFailed::Unavailable(m)) => return Err((ResponseError::NotController, m)),
        }
    }
    Ok(())
}

pub fn describe_user_scram_credentials(
    b: &Admin<'_>,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let view = b.views.current();
    let store = &view.image.scram_credentials;
    let mut resp = DescribeUserScramCredentialsResponse::default();
    // Null or empty: every user (Kafka's reading).
    let users: Vec<String> = match &req.users {
        Some(list) if !list.is_empty() => list.iter().map(|u| u.name.to_string()).collect(),
        _ => store.keys().cloned().collect(),
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for u in &users {
        *counts.entry(u.as_str()).or_default() += 1;
    }
    let mut done = BTreeSet::new();
    for user in &users {
        if !done.insert(user.as_str()) {
            continue;
        }
        let mut result = DescribeUserScramCredentialsResult::default();
        result.user = str_bytes(user.clone());
        if counts.get(user.as_str()).copied().unwrap_or(0) > 1 {
            result.error_code = error_code(b.metrics, ResponseError::DuplicateResource);
            result.error_message =
                Some(str_bytes(format!("user '{user}' asked for more than once")));
        } else {
            match store.get(user) {
                Some(mechanisms) => {
                    result.credential_infos = mechanisms
                        .iter()
                        .map(|(m, c)| {
                            let mut info = CredentialInfo::default();
                            info.mechanism = m.code();
                            info.iterations = c.iterations;
                            info
                        })
                        .collect();
                }
                None => {
                    result.error_code = error_code(b.metrics, ResponseError::ResourceNotFound);
                    result.error_message = Some(str_bytes(
                        "Attempt to describe a user credential that does not exist",
                    ));
                }
            }
        }
        resp.results.push(result);
    }
    resp
}
