//! `sluice-broker plugin ...`: the plugin commands of the CLI, talking to a
//! running broker's HTTP admin API. A minimal HTTP/1.1 client over a TCP
//! stream (TLS with `--ca`) is enough for these few calls. `plugin test`
//! runs a module locally (`plugin_test`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;

use super::{CliError, ExitStatus};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Upload a module as a new plugin or a new version of one.
    Upload {
        #[arg(long)]
        name: String,
        /// partitioner, interceptor or filter (only needed for a new plugin).
        #[arg(long)]
        kind: Option<String>,
        /// The compiled `.wasm` file.
        file: PathBuf,
    },
    /// List plugins with their latest version and bound topics.
    List,
    /// Show one plugin: kind, digest, size, ABI version, versions, bound topics.
    Describe { name: String },
    /// Delete a plugin (refused while bound to a topic unless --force).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Run a module on sample records locally, without a broker, and show
    /// what the broker would do with each (partition, rewritten record or
    /// rejection, kept or dropped).
    Test(super::plugin_test::TestArgs),
}

/// Runs a plugin command against the admin API at `admin` (host:port),
/// over TLS when `ca` names the CA certificates to check the broker with;
/// `test` runs locally instead.
pub fn run(
    admin: &str,
    token: Option<&str>,
    ca: Option<&Path>,
    cmd: PluginCommand,
) -> Result<(), CliError> {
    let read = |file: &Path| {
        std::fs::read(file)
            .with_context(|| format!("reading {}", file.display()))
            .map_err(CliError::refused)
    };
    let (method, path, body) = match cmd {
        PluginCommand::Test(args) => return super::plugin_test::run(args),
        PluginCommand::Upload { name, kind, file } => {
            let query = kind.map(|k| format!("?kind={k}")).unwrap_or_default();
            ("POST", format!("/v1/plugins/{name}{query}"), read(&file)?)
        }
        PluginCommand::List => ("GET", "/v1/plugins".to_string(), Vec::new()),
        PluginCommand::Describe { name } => ("GET", format!("/v1/plugins/{name}"), Vec::new()),
        PluginCommand::Delete { name, force } => (
            "DELETE",
            format!(
                "/v1/plugins/{name}{}",
                if force { "?force=true" } else { "" }
            ),
            Vec::new(),
        ),
    };
    let tls = ca
        .map(|path| -> Result<_, CliError> {
            let pem = read(path)?;
            let config = sluice_client::tls::client_config_from_pem(&pem, None, true)
                .map_err(CliError::refused)?;
            Ok(Arc::new(config))
        })
        .transpose()?;
    let (status, body) =
        request(admin, token, tls, method, &path, &body).map_err(|error| CliError {
            status: ExitStatus::Unreachable,
            error,
        })?;
    let text = String::from_utf8_lossy(&body);
    // Pretty-print JSON answers; show anything else as it came.
    let shown = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string());
    if (200..300).contains(&status) {
        if !shown.is_empty() {
            println!("{shown}");
        }
        Ok(())
    } else {
        Err(CliError::refused(anyhow::anyhow!(
            "broker answered {status}: {shown}"
        )))
    }
}

fn request(
    admin: &str,
    token: Option<&str>,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    if token.is_some_and(|t| t.contains(['\r', '\n'])) {
        bail!("the admin token must be one line");
    }
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let tcp = TcpStream::connect(admin)
        .with_context(|| format!("connecting to the broker's admin API at {admin}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let host = admin
                .rsplit_once(':')
                .map_or(admin, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .with_context(|| format!("{host} is not a host name or address"))?;
            let conn = rustls::ClientConnection::new(config, name)?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{authorization}Content-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP response from the broker")?;
    let status_line = String::from_utf8_lossy(&response[..split]);
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line from the broker")?;
    let headers = status_line.to_ascii_lowercase();
    let mut payload = response[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload);
    }
    Ok((status, payload))
}

/// A byte stream to the admin API: TCP, or TLS over it.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&data[nl + 2..nl + 2 + size]);
        data = &data[(nl + 4 + size).min(data.len())..];
    }
    out
}
