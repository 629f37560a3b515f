//! Who calls the HTTP admin API. With `--admin-auth-tokens-file`, every
//! request but the kubelet's probes (`/healthz`, `/readyz`) must carry
//! `Authorization: Bearer <token>`, and the token names the caller's
//! principal (401 otherwise); without it the caller is `User:ANONYMOUS`.
//! Plugin changes then need ALTER on the cluster and plugin reads
//! DESCRIBE, checked by the broker's authorizer like any Kafka request
//! (403 when refused; everything is allowed while the authorizer is off).
//! The tokens file is read again when it changes.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::ANONYMOUS;
use crate::auth::authorizer::{CLUSTER, Caller};
use crate::broker::Broker;
use sluice_metadata::acl::{Operation, ResourceType};

/// Tokens and the principals they stand for.
pub struct AdminTokens {
    entries: Vec<(Vec<u8>, String)>,
}

impl AdminTokens {
    /// Reads `principal token` lines (`#` starts a comment), e.g.
    /// `User:ops 9f2c...`.
    pub fn load(path: &Path) -> anyhow::Result<AdminTokens> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading admin-auth-tokens-file {}", path.display()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (principal, token) = line
                .split_once(char::is_whitespace)
                .map(|(p, t)| (p.trim(), t.trim()))
                .with_context(|| {
                    format!("{}:{}: expected 'User:name token'", path.display(), i + 1)
                })?;
            if !principal.contains(':') || token.len() < 16 {
                bail!(
                    "{}:{}: expected 'User:name token' with a token of at least 16 characters",
                    path.display(),
                    i + 1
                );
            }
            entries.push((token.as_bytes().to_vec(), principal.to_string()));
        }
        if entries.is_empty() {
            bail!("{}: no tokens", path.display());
        }
        Ok(AdminTokens { entries })
    }

    /// The tokens of `path`, read again when the file changes (a renewed
    /// Kubernetes Secret): a file that does not load keeps the previous
    /// tokens and is logged.
    pub fn reloading(path: &Path) -> anyhow::Result<sluice_client::tls::Reloading<AdminTokens>> {
        let file = path.to_path_buf();
        let load = move || {
            AdminTokens::load(&file)
                .map_err(|e| sluice_client::tls::TlsError::Config(format!("{e:#}")))
        };
        Ok(sluice_client::tls::Reloading::new(
            vec![path.to_path_buf()],
            load,
        )?)
    }

    /// Whether some token stands for `principal`.
    fn names(&self, principal: &str) -> bool {
        self.entries.iter().any(|(_, p)| p == principal)
    }

    fn principal(&self, token: &[u8]) -> Option<&str> {
        // Compared in constant time, every entry looked at.
        let mut found = None;
        for (t, p) in &self.entries {
            let same = t.len() == token.len()
                && t.iter().zip(token).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = Some(p.as_str());
            }
        }
        found
    }
}

/// The principal of the admin connection's verified client certificate,
/// if it presented one (a request extension set by the TLS server).
#[derive(Clone)]
pub struct CertificatePrincipal(pub Option<String>);

/// The admin caller's principal (a request extension).
#[derive(Clone)]
pub struct AdminPrincipal(pub String);

/// Middleware: authenticates the caller (see the module docs).
pub async fn authenticate(State(b): State<Arc<Broker>>, mut req: Request, next: Next) -> Response {
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    let certificate = req
        .extensions()
        .get::<CertificatePrincipal>()
        .and_then(|c| c.0.clone());
    let principal = match (&b.admin_tokens, certificate) {
        _ if probe => ANONYMOUS.to_string(),
        // A client certificate the TLS layer verified says who this is,
        // if that principal is one the admin API knows (a token's or a
        // super user): the truststore also signs Kafka clients'
        // certificates, which alone must not open the admin API.
        (Some(tokens), Some(principal))
            if tokens.current().names(&principal) || b.authorizer.is_super_user(&principal) =>
        {
            principal
        }
        (None, Some(principal)) => principal,
        (None, None) => ANONYMOUS.to_string(),
        (Some(tokens), _) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let tokens = tokens.current();
            match presented.and_then(|t| tokens.principal(t.as_bytes())) {
                Some(p) => p.to_string(),
                None => {
                    return (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Bearer realm=\"sluice\"")],
                        axum::Json(serde_json::json!({
                            "error": "a valid 'Authorization: Bearer <token>' header is required"
                        })),
                    )
                        .into_response();
                }
            }
        }
    };
    req.extensions_mut().insert(AdminPrincipal(principal));
    next.run(req).await
}

/// The 403 answer when `who` may not do `op` on the cluster.
pub fn refusal(b: &Broker, who: &AdminPrincipal, op: Operation) -> Option<Response> {
    let caller = Caller {
        principal: who.0.clone(),
        host: String::new(),
        trusted: false,
    };
    if b.authorizer
        .allows(&b.view().image, &caller, op, ResourceType::Cluster, CLUSTER)
    {
        return None;
    }
    Some(
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": format!("{} may not {op:?} the cluster (an ACL is needed)", who.0)
            })),
        )
            .into_response(),
    )
}
