//! The brokers' HTTP admin API, as the operator uses it: the plugin
//! registry (describe, upload, delete) and a broker's own gauges on
//! `/metrics` (under-replicated partitions, before a rolling restart).

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::crd::PluginKind;
use crate::plugin_plan::RegisteredPlugin;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a `/metrics` page or a plugin description).
const MAX_BODY: usize = 8 << 20;

#[derive(Clone)]
enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

#[derive(Clone)]
pub struct BrokerAdmin {
    client: HttpClient,
    base: String,
    /// Bearer token (brokers with `admin-auth-tokens-file`).
    token: Option<String>,
}

fn kind_name(k: &PluginKind) -> &'static str {
    match k {
        PluginKind::Partitioner => "partitioner",
        PluginKind::Interceptor => "interceptor",
        PluginKind::Filter => "filter",
    }
}

impl BrokerAdmin {
    /// `base` is e.g. `http://demo-bootstrap.ns.svc:9644`.
    pub fn new(base: &str) -> BrokerAdmin {
        BrokerAdmin {
            client: HttpClient::Plain(Client::builder(TokioExecutor::new()).build_http()),
            base: base.trim_end_matches('/').to_string(),
            token: None,
        }
    }

    /// `base` is an `https://` URL of an admin API served over TLS
    /// (`--admin-tls`), whose certificate chains to `ca` (PEM).
    pub fn with_tls(base: &str, ca: &[u8]) -> anyhow::Result<BrokerAdmin> {
        let config = sluice_client::tls::client_config_from_pem(ca, None, true)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        Ok(BrokerAdmin {
            client: HttpClient::Tls(Client::builder(TokioExecutor::new()).build(https)),
            base: base.trim_end_matches('/').to_string(),
            token: None,
        })
    }

    /// The same client (connections, TLS, token) for another broker's
    /// admin API.
    pub fn at(&self, base: &str) -> BrokerAdmin {
        BrokerAdmin {
            base: base.trim_end_matches('/').to_string(),
            ..self.clone()
        }
    }

    pub fn with_token(mut self, token: Option<String>) -> BrokerAdmin {
        self.token = token;
        self
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/wasm");
        if let Some(token) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("bad admin URL {url}"))?;
        let exchange = async {
            let resp = match &self.client {
                HttpClient::Plain(c) => c.request(req).await?,
                HttpClient::Tls(c) => c.request(req).await?,
            };
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
                .to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {url} timed out"))?
            .with_context(|| format!("{method} {url}"))
    }

    fn refused(what: &str, status: StatusCode, body: &[u8]) -> anyhow::Error {
        let msg = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        anyhow::anyhow!("{what}: {status}: {msg}")
    }

    /// The registry entry of `name`, or `None` if there is none.
    pub async fn plugin(&self, name: &str) -> anyhow::Result<Option<RegisteredPlugin>> {
        let (status, body) = self
            .call(Method::GET, &format!("/v1/plugins/{name}"), Vec::new())
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                serde_json::from_slice(&body).context("decoding the plugin description")?,
            )),
            s => Err(Self::refused(
                &format!("describing plugin {name}"),
                s,
                &body,
            )),
        }
    }

    /// Uploads a module. The inner `Err` is the brokers' verdict on the
    /// module itself (a 4xx: not WebAssembly, wrong exports, too big),
    /// which retrying cannot change; the outer one is a failure to ask.
    pub async fn upload(
        &self,
        name: &str,
        kind: &PluginKind,
        wasm: &[u8],
    ) -> anyhow::Result<Result<(), String>> {
        let path = format!("/v1/plugins/{name}?kind={}", kind_name(kind));
        let (status, body) = self.call(Method::PUT, &path, wasm.to_vec()).await?;
        let what = format!("uploading plugin {name}");
        if status.is_client_error() {
            return Ok(Err(Self::refused(&what, status, &body).to_string()));
        }
        if !status.is_success() {
            return Err(Self::refused(&what, status, &body));
        }
        Ok(Ok(()))
    }

    /// Deletes `name`; one that is already gone is not an error.
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .call(Method::DELETE, &format!("/v1/plugins/{name}"), Vec::new())
            .await?;
        if !status.is_success() && status != StatusCode::NOT_FOUND {
            return Err(Self::refused(
                &format!("deleting plugin {name}"),
                status,
                &body,
            ));
        }
        Ok(())
    }

    /// The value of the first sample of `metric` whose labels include
    /// `label` (`name="value"`), from this broker's `/metrics`.
    pub async fn gauge(&self, metric: &str, label: &str) -> anyhow::Result<f64> {
        let (status, body) = self.call(Method::GET, "/metrics", Vec::new()).await?;
        if !status.is_success() {
            bail!("GET {}/metrics: {status}", self.base);
        }
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(series, _)| {
                series.starts_with(&format!("{metric}{{")) && series.contains(label)
            })
            .and_then(|(_, v)| v.trim().parse().ok())
            .with_context(|| format!("{}/metrics has no {metric}{{{label}}}", self.base))
    }
}
