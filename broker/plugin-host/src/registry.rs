//! Uploaded plugins: validated, versioned, persisted under
//! `<data>/__sluice_meta/plugins/<name>/`, compiled once per version and
//! hot-swapped on upload (calls in flight keep the version they started
//! with; the next call uses the new one).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use sluice_metadata::image::PluginImage;
use sluice_metadata::plugins::{PluginKind, VersionInfo, validate_name};

use super::artifacts;
use super::host::{CompiledPlugin, PluginEngine};

/// Largest module accepted.
pub const MAX_MODULE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("plugin '{0}' does not exist")]
    NotFound(String),
    #[error("plugin '{name}' is a {existing}; a new version cannot be a {requested}")]
    KindChange {
        name: String,
        existing: PluginKind,
        requested: PluginKind,
    },
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
}

struct Entry {
    versions: Vec<VersionInfo>,
    current: Arc<CompiledPlugin>,
}

pub struct PluginRegistry {
    dir: PathBuf,
    engine: Arc<PluginEngine>,
    plugins: RwLock<BTreeMap<String, Entry>>,
    /// The module this broker compiled while checking an upload, kept (by
    /// digest) so installing the committed version does not compile again.
    prepared: std::sync::Mutex<Option<(String, Arc<CompiledPlugin>)>>,
    /// Plugins `open` loaded from compiled artifacts instead of compiling.
    artifact_hits: usize,
}

impl PluginRegistry {
    /// Loads and compiles the latest version of every stored plugin.
    pub fn open(dir: &Path, engine: Arc<PluginEngine>) -> anyhow::Result<PluginRegistry> {
        fs::create_dir_all(dir)?;
        let mut plugins = BTreeMap::new();
        let mut artifact_hits = 0;
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let path = entry.path();
            let meta_path = path.join("versions.json");
            let Ok(text) = fs::read_to_string(&meta_path) else {
                continue;
            };
            let versions: Vec<VersionInfo> = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", meta_path.display()))?;
            let Some(latest) = versions.last().cloned() else {
                continue;
            };
            let (compiled, from_artifact) = load_version(&engine, &path, &name, &latest)?;
            artifact_hits += usize::from(from_artifact);
            plugins.insert(
                name,
                Entry {
                    versions,
                    current: Arc::new(compiled),
                },
            );
        }
        Ok(PluginRegistry {
            dir: dir.to_path_buf(),
            engine,
            plugins: RwLock::new(plugins),
            prepared: std::sync::Mutex::new(None),
            artifact_hits,
        })
    }

    pub fn artifact_hits(&self) -> usize {
        self.artifact_hits
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.plugins.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything `upload` checks (name, size, kind, that the module
    /// compiles and exports the ABI), without storing anything: a cluster
    /// checks an upload before committing it. Returns the module's digest.
    pub fn prepare(
        &self,
        name: &str,
        kind: PluginKind,
        wasm: &[u8],
    ) -> Result<String, RegistryError> {
        validate_name(name).map_err(RegistryError::Invalid)?;
        if wasm.len() > MAX_MODULE_BYTES {
            return Err(RegistryError::Invalid(format!(
                "module is {} bytes; the limit is {MAX_MODULE_BYTES}",
                wasm.len()
            )));
        }
        if let Some(e) = self.read().get(name)
            && let Some(existing) = e.versions.last().map(|v| v.kind)
            && existing != kind
        {
            return Err(RegistryError::KindChange {
                name: name.to_string(),
                existing,
                requested: kind,
            });
        }
        let compiled = self
            .engine
            .compile(name, kind, wasm)
            .map_err(RegistryError::Invalid)?;
        let sha = format!("{:x}", Sha256::digest(wasm));
        *self.prepared.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((sha.clone(), Arc::new(compiled)));
        Ok(sha)
    }

    /// Makes this broker's registry match the cluster's: installs plugins
    /// whose current version it lacks, removes plugins the cluster deleted.
    /// A module that fails to compile here is logged and skipped (it stays
    /// unavailable on this broker rather than stopping metadata updates).
    pub fn sync(&self, wanted: &BTreeMap<String, PluginImage>) {
        let local: Vec<(String, Option<String>)> = self
            .read()
            .iter()
            .map(|(n, e)| (n.clone(), e.versions.last().map(|v| v.sha256.clone())))
            .collect();
        for (name, _) in local.iter().filter(|(n, _)| !wanted.contains_key(n)) {
            if let Err(e) = self.delete(name) {
                tracing::warn!(plugin = %name, error = %e, "removing a deleted plugin failed");
            }
        }
        for (name, p) in wanted {
            let Some(latest) = p.versions.last() else {
                continue;
            };
            let have = local
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, sha)| sha.as_deref());
            let same_history = self.versions(name).is_some_and(|v| v == p.versions);
            if have == Some(latest.sha256.as_str()) && same_history {
                continue;
            }
            if let Err(e) = self.install(name, &p.versions, &p.wasm.0) {
                tracing::error!(plugin = %name, version = latest.version, error = %e, "cannot install plugin from the cluster registry");
            }
        }
    }

    /// Stores and activates the committed `versions` of `name`, whose last
    /// one is `wasm`.
    fn install(
        &self,
        name: &str,
        versions: &[VersionInfo],
        wasm: &[u8],
    ) -> Result<(), RegistryError> {
        validate_name(name).map_err(RegistryError::Invalid)?;
        let Some(info) = versions.last().cloned() else {
            return Ok(());
        };
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|(sha, _)| *sha == info.sha256)
            .map(|(_, c)| c);
        let compiled = match prepared {
            Some(c) => c,
            None => Arc::new(
                self.engine
                    .compile(name, info.kind, wasm)
                    .map_err(RegistryError::Invalid)?,
            ),
        };
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(format!("{}.wasm", info.version)), wasm)?;
        let artifact = dir.join(format!("{}.cwasm", info.version));
        if let Err(e) = artifacts::store(&artifact, compiled.module(), &info.sha256, write_atomic) {
            tracing::warn!(plugin = %name, error = %e, "cannot cache compiled code; the next start compiles again");
        }
        let meta = serde_json::to_vec_pretty(versions).map_err(std::io::Error::other)?;
        write_atomic(&dir.join("versions.json"), &meta)?;
        self.plugins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name.to_string(),
                Entry {
                    versions: versions.to_vec(),
                    current: compiled,
                },
            );
        tracing::info!(plugin = %name, version = info.version, kind = %info.kind, sha256 = %info.sha256, "plugin installed");
        Ok(())
    }

    /// The current module of `name`, for migrating a registry that
    /// predates the cluster's.
    pub fn current_wasm(&self, name: &str) -> Option<(VersionInfo, Vec<u8>)> {
        let info = self.versions(name)?.last()?.clone();
        let wasm = fs::read(self.dir.join(name).join(format!("{}.wasm", info.version))).ok()?;
        Some((info, wasm))
    }

    /// Validates, stores and activates a new version on this broker alone
    /// (the cluster path is `prepare`, commit, `sync`). Nothing changes if
    /// any check fails.
    pub fn upload(
        &self,
        name: &str,
        kind: PluginKind,
        wasm: &[u8],
    ) -> Result<VersionInfo, RegistryError> {
        let sha256 = self.prepare(name, kind, wasm)?;
        let mut versions = self.versions(name).unwrap_or_default();
        let info = VersionInfo {
            version: versions.last().map_or(1, |v| v.version + 1),
            kind,
            sha256,
            size: wasm.len(),
            uploaded_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            abi_version: sluice_plugin::ABI_VERSION,
        };
        versions.push(info.clone());
        self.install(name, &versions, wasm)?;
        Ok(info)
    }

    pub fn get(&self, name: &str) -> Option<Arc<CompiledPlugin>> {
        self.read().get(name).map(|e| e.current.clone())
    }

    pub fn kind(&self, name: &str) -> Option<PluginKind> {
        self.read()
            .get(name)
            .and_then(|e| e.versions.last().map(|v| v.kind))
    }

    /// (name, versions) of every plugin.
    pub fn list(&self) -> Vec<(String, Vec<VersionInfo>)> {
        self.read()
            .iter()
            .map(|(n, e)| (n.clone(), e.versions.clone()))
            .collect()
    }

    pub fn versions(&self, name: &str) -> Option<Vec<VersionInfo>> {
        self.read().get(name).map(|e| e.versions.clone())
    }

    /// Removes every version. The caller checks bindings first.
    pub fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        if plugins.remove(name).is_none() {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        let dir = self.dir.join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        tracing::info!(plugin = %name, "plugin deleted");
        Ok(())
    }

    /// Memory held by idle instances, per plugin (for metrics).
    pub fn memory_by_plugin(&self) -> Vec<(String, usize)> {
        self.read()
            .iter()
            .map(|(n, e)| (n.clone(), e.current.pooled_memory_bytes()))
            .collect()
    }
}

/// The current version of a stored plugin: from its compiled artifact when
/// that is intact and fits this engine (then `true`), else compiled from the
/// wasm and the artifact rewritten. The wasm's digest must match what upload
/// recorded.
fn load_version(
    engine: &PluginEngine,
    dir: &Path,
    name: &str,
    v: &VersionInfo,
) -> anyhow::Result<(CompiledPlugin, bool)> {
    let wasm_path = dir.join(format!("{}.wasm", v.version));
    let artifact = dir.join(format!("{}.cwasm", v.version));
    let wasm = fs::read(&wasm_path)?;
    let digest = format!("{:x}", Sha256::digest(&wasm));
    if digest != v.sha256 {
        anyhow::bail!(
            "plugin {name} v{}: {} has sha256 {digest}, but {} was uploaded",
            v.version,
            wasm_path.display(),
            v.sha256
        );
    }
    let started = std::time::Instant::now();
    match artifacts::load(engine.engine(), &artifact, &v.sha256) {
        Ok(module) => {
            let compiled = engine
                .prepare(name, v.kind, module)
                .map_err(|e| anyhow::anyhow!("plugin {name} v{}: {e}", v.version))?;
            tracing::info!(plugin = %name, version = v.version, kind = %v.kind,
                ms = started.elapsed().as_millis() as u64, "loaded plugin from its compiled artifact");
            return Ok((compiled, true));
        }
        Err(artifacts::Miss::Absent) => {}
        Err(miss) => {
            tracing::warn!(plugin = %name, version = v.version, reason = %miss, "compiled artifact not used; compiling the wasm")
        }
    }
    let compiled = engine
        .compile(name, v.kind, &wasm)
        .map_err(|e| anyhow::anyhow!("plugin {name} v{}: {e}", v.version))?;
    if let Err(e) = artifacts::store(&artifact, compiled.module(), &v.sha256, write_atomic) {
        tracing::warn!(plugin = %name, error = %e, "cannot cache compiled code");
    }
    tracing::info!(plugin = %name, version = v.version, kind = %v.kind,
        ms = started.elapsed().as_millis() as u64, "compiled plugin");
    Ok((compiled, false))
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, data)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)
}
