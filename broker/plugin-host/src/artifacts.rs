//! On-disk cache of compiled plugin code, so a restart does not recompile
//! every plugin (Cranelift takes tens to hundreds of milliseconds per module,
//! and a broker with many plugins would start slowly).
//!
//! Next to `<version>.wasm` the registry keeps `<version>.cwasm` (wasmtime's
//! serialized module) and `<version>.cwasm.sha256` (digest of the artifact
//! and of the wasm it came from). Loading native code is the one thing in
//! the broker that needs `unsafe`: wasmtime trusts a serialized module to be
//! its own output. The rules that make that true here:
//!
//! - only artifacts this broker wrote are loaded (the digest file binds an
//!   artifact to its wasm and catches truncation or bit rot);
//! - wasmtime itself refuses artifacts from another wasmtime version or
//!   engine configuration, and the caller then recompiles from the wasm;
//! - the data directory is trusted like the broker binary: whoever can
//!   rewrite it can already rewrite everything the broker serves.
//!
//! Any doubt means a cache miss: the wasm is compiled again and the cache
//! rewritten. A cache problem never fails a load.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

fn digest_path(artifact: &Path) -> PathBuf {
    let mut p = artifact.as_os_str().to_owned();
    p.push(".sha256");
    PathBuf::from(p)
}

fn hex_sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// What the digest file records: the artifact's digest, then the digest of
/// the wasm it was compiled from.
fn digest_line(artifact: &[u8], wasm_sha256: &str) -> String {
    format!("{} {wasm_sha256}\n", hex_sha256(artifact))
}

/// Writes the compiled form of `module`. Errors are the caller's to log:
/// without a cache the next start just compiles again.
pub fn store(
    artifact: &Path,
    module: &Module,
    wasm_sha256: &str,
    write: impl Fn(&Path, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let bytes = module.serialize().map_err(io::Error::other)?;
    write(artifact, &bytes)?;
    write(
        &digest_path(artifact),
        digest_line(&bytes, wasm_sha256).as_bytes(),
    )
}

/// Why a cached artifact was not used (for the log line).
#[derive(Debug, thiserror::Error)]
pub enum Miss {
    #[error("no compiled artifact")]
    Absent,
    #[error("artifact digest does not match (corrupt, or not from this wasm)")]
    Digest,
    #[error("wasmtime refused it: {0}")]
    Incompatible(String),
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
}

/// The cached module for the wasm whose digest is `wasm_sha256`, if the
/// artifact is intact and this engine can run it.
pub fn load(engine: &Engine, artifact: &Path, wasm_sha256: &str) -> Result<Module, Miss> {
    let bytes = match fs::read(artifact) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Miss::Absent),
        Err(e) => return Err(e.into()),
    };
    let recorded = fs::read_to_string(digest_path(artifact))?;
    if recorded != digest_line(&bytes, wasm_sha256) {
        return Err(Miss::Digest);
    }
    deserialize(engine, &bytes).map_err(|e| Miss::Incompatible(e.to_string()))
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: `bytes` is an artifact this broker serialized itself (its
    // digest, written next to it, matches), read back from the trusted data
    // directory; wasmtime checks that it was produced by this wasmtime
    // version with a compatible engine configuration and errors otherwise.
    unsafe { Module::deserialize(engine, bytes) }
}
