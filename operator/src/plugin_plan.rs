//! What the Plugin controller should do, as a pure function of what it
//! observed: the resource, the module bytes its source resolves to, and the
//! brokers' registry entry of the same name. An upload happens only when
//! the registry's digest (or kind) differs from the module's, so a
//! converged Plugin causes no broker writes and no new versions.

use sha2::{Digest, Sha256};

use crate::crd::{Condition, Plugin, PluginKind, PluginStatus, has_finalizer};

/// Finalizer the operator puts on every Plugin.
pub const FINALIZER: &str = "sluice.dev/plugin";

/// A plugin as the brokers' admin API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
pub struct RegisteredPlugin {
    #[serde(default)]
    pub kind: Option<PluginKind>,
    pub version: i64,
    pub sha256: String,
    #[serde(default)]
    pub bound_topics: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub plugin: &'a Plugin,
    /// Whether the referenced Cluster exists (and is not being deleted).
    pub cluster_exists: bool,
    /// The module from the resource's source, or why it could not be read.
    pub wasm: Result<Vec<u8>, String>,
    /// The brokers' registry entry of this plugin's name.
    pub registered: Option<RegisteredPlugin>,
    pub now: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AddFinalizer,
    RemoveFinalizer,
    Upload {
        name: String,
        kind: PluginKind,
        wasm: Vec<u8>,
    },
    Delete {
        name: String,
    },
    UpdateStatus(PluginStatus),
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

pub fn digest(wasm: &[u8]) -> String {
    format!("{:x}", Sha256::digest(wasm))
}

pub fn plan(o: &Observed<'_>) -> Vec<Action> {
    let p = o.plugin;
    let name = p.metadata.name.clone().unwrap_or_default();
    let generation = p.metadata.generation.unwrap_or(0);
    let prev = p.status.as_ref();
    let mut actions = Vec::new();
    let ready = |ok: bool, reason: &str, message: String| {
        Condition::new(prev, o.now, generation, "Ready", ok, reason, message)
    };

    if p.metadata.deletion_timestamp.is_some() {
        if !has_finalizer(&p.metadata, FINALIZER) {
            return actions;
        }
        match (&o.registered, o.cluster_exists) {
            (Some(r), true) if r.bound_topics.is_empty() => {
                actions.push(Action::Delete { name: name.clone() });
                actions.push(Action::Event {
                    warning: false,
                    reason: "Deleted".into(),
                    message: format!("deleted plugin {name} from the brokers"),
                });
            }
            // Deleting a bound plugin would break those topics' produce
            // path; waiting for them could leave the namespace stuck.
            (Some(r), true) => actions.push(Action::Event {
                warning: true,
                reason: "LeftInRegistry".into(),
                message: format!(
                    "plugin {name} stays in the brokers' registry: topics {} bind it",
                    r.bound_topics.join(", ")
                ),
            }),
            _ => {}
        }
        actions.push(Action::RemoveFinalizer);
        return actions;
    }

    if !has_finalizer(&p.metadata, FINALIZER) {
        actions.push(Action::AddFinalizer);
    }
    let mut status = PluginStatus {
        observed_generation: generation,
        digest: prev.map(|s| s.digest.clone()).unwrap_or_default(),
        version: prev.map_or(0, |s| s.version),
        conditions: Vec::new(),
    };
    if !o.cluster_exists {
        status.conditions.push(ready(
            false,
            "ClusterNotFound",
            format!("Cluster {} does not exist", p.spec.cluster.name),
        ));
    } else {
        match &o.wasm {
            Err(why) => status
                .conditions
                .push(ready(false, "InvalidSource", why.clone())),
            Ok(wasm) => {
                let want = digest(wasm);
                let current = o
                    .registered
                    .as_ref()
                    .filter(|r| r.sha256 == want && r.kind.as_ref() == Some(&p.spec.kind));
                match current {
                    Some(r) => {
                        status.digest = r.sha256.clone();
                        status.version = r.version;
                        status.conditions.push(ready(
                            true,
                            "Uploaded",
                            format!("version {} is live on the brokers", r.version),
                        ));
                    }
                    None => {
                        // The registry numbers versions 1, 2, ... per name.
                        let version = o.registered.as_ref().map_or(1, |r| r.version + 1);
                        actions.push(Action::Upload {
                            name: name.clone(),
                            kind: p.spec.kind.clone(),
                            wasm: wasm.clone(),
                        });
                        actions.push(Action::Event {
                            warning: false,
                            reason: "Uploaded".into(),
                            message: format!("uploaded {name} version {version} (sha256 {want})"),
                        });
                        status.digest = want;
                        status.version = version;
                        status.conditions.push(ready(
                            true,
                            "Uploaded",
                            format!("version {version} is live on the brokers"),
                        ));
                    }
                }
            }
        }
    }
    if prev != Some(&status) {
        actions.push(Action::UpdateStatus(status));
    }
    actions
}
