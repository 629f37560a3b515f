//! What the Cluster controller should do, as a pure function of what it
//! observed: the Cluster, its broker pods, the brokers' health and the
//! topics placed on them. The objects themselves come from
//! `cluster_objects`; this decides how many brokers they may have, which
//! broker to restart next in a rolling change, and the conditions.

use crate::cluster_objects::{self, ClusterObjects};
use crate::crd::{Cluster, ClusterStatus, Condition};

/// One broker pod as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    pub ordinal: i32,
    pub ready: bool,
    /// Being deleted (a restart in progress).
    pub terminating: bool,
    /// The `sluice.dev/config-hash` its template had.
    pub config_hash: String,
}

#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub cluster: &'a Cluster,
    /// Replicas of the existing StatefulSet (`None` before it exists).
    pub current_brokers: Option<i32>,
    pub pods: Vec<ObservedPod>,
    /// Partitions whose ISR is smaller than their replica set, cluster-wide
    /// (from the brokers' metrics); `None` if the brokers cannot be asked.
    pub under_replicated: Option<u64>,
    /// Largest replication factor of the cluster's topics.
    pub max_replication_factor: i32,
    /// Broker ids that hold at least one replica.
    pub brokers_with_replicas: Vec<i32>,
    /// Whether the two fields above come from the brokers; if they could
    /// not be asked, no scale-down is allowed.
    pub replicas_known: bool,
    pub now: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make the Secret with the operator's admin-API tokens if it does not
    /// exist (authorization on; the brokers mount it, so it comes first).
    EnsureCredentials,
    /// Server-side apply of every object (with the allowed broker count).
    Apply(Box<ClusterObjects>),
    /// Restart one broker (the StatefulSet recreates it from the new template).
    DeletePod {
        ordinal: i32,
    },
    UpdateStatus(ClusterStatus),
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

/// Why the spec's broker count cannot be applied, if it cannot.
fn scale_down_refusal(o: &Observed<'_>) -> Option<String> {
    let want = o.cluster.spec.brokers;
    let have = o.current_brokers?;
    if want >= have {
        return None;
    }
    if !o.replicas_known {
        return Some(format!(
            "cannot scale to {want} brokers: the brokers cannot be asked which of them hold replicas"
        ));
    }
    if want < o.max_replication_factor {
        return Some(format!(
            "cannot scale to {want} brokers: a topic has replication factor {}",
            o.max_replication_factor
        ));
    }
    let departing: Vec<i32> = o
        .brokers_with_replicas
        .iter()
        .copied()
        .filter(|b| *b >= want)
        .collect();
    if !departing.is_empty() {
        return Some(format!(
            "cannot scale to {want} brokers: brokers {departing:?} still hold replicas"
        ));
    }
    None
}

pub fn plan(o: &Observed<'_>) -> Vec<Action> {
    let c = o.cluster;
    let generation = c.metadata.generation.unwrap_or(0);
    let prev = c.status.as_ref();
    let mut actions = Vec::new();
    let mut conditions = Vec::new();

    if let Some(why) = c.spec.security_problem() {
        // Nothing is applied: brokers started from it would not start.
        let status = ClusterStatus {
            conditions: vec![Condition::new(
                prev,
                o.now,
                generation,
                "Ready",
                false,
                "InvalidSpec",
                why.clone(),
            )],
            observed_generation: generation,
            ready_brokers: prev.map_or(0, |s| s.ready_brokers),
            bootstrap: cluster_objects::bootstrap_address(c),
        };
        if prev != Some(&status) {
            actions.push(Action::Event {
                warning: true,
                reason: "InvalidSpec".into(),
                message: why,
            });
            actions.push(Action::UpdateStatus(status));
        }
        return actions;
    }
    if c.spec.authorization.is_some() {
        actions.push(Action::EnsureCredentials);
    }

    let refusal = scale_down_refusal(o);
    let allowed = match (&refusal, o.current_brokers) {
        (Some(_), Some(have)) => have,
        _ => c.spec.brokers,
    };
    let mut objects = cluster_objects::desired(c);
    if let Some(spec) = objects.statefulset.spec.as_mut() {
        spec.replicas = Some(allowed);
    }
    let desired_hash = objects
        .statefulset
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(cluster_objects::CONFIG_HASH_ANNOTATION).cloned())
        .unwrap_or_default();
    actions.push(Action::Apply(Box::new(objects)));

    if let Some(why) = &refusal {
        let already = prev
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "ScaleDownRefused"))
            .is_some_and(|c| c.status == "True" && &c.message == why);
        if !already {
            actions.push(Action::Event {
                warning: true,
                reason: "ScaleDownRefused".into(),
                message: why.clone(),
            });
        }
        conditions.push(Condition::new(
            prev,
            o.now,
            generation,
            "ScaleDownRefused",
            true,
            "ReplicasWouldBeLost",
            why.clone(),
        ));
    }

    // Rolling change: one broker at a time, only from a healthy cluster.
    let ready = o.pods.iter().filter(|p| p.ready && !p.terminating).count() as i32;
    let outdated: Vec<&ObservedPod> = o
        .pods
        .iter()
        .filter(|p| p.config_hash != desired_hash)
        .collect();
    // A pod not yet recreated counts as down: every pod must be there.
    let healthy = ready == allowed
        && o.pods.len() as i32 == allowed
        && o.pods.iter().all(|p| !p.terminating)
        && o.under_replicated == Some(0);
    let rolling = !outdated.is_empty();
    if rolling {
        if healthy {
            // Highest ordinal first, as a StatefulSet rolling update would.
            if let Some(next) = outdated.iter().map(|p| p.ordinal).max() {
                actions.push(Action::DeletePod { ordinal: next });
                actions.push(Action::Event {
                    warning: false,
                    reason: "RollingRestart".into(),
                    message: format!("restarting broker {next} for a config change"),
                });
            }
        }
        conditions.push(Condition::new(
            prev,
            o.now,
            generation,
            "Rolling",
            true,
            if healthy {
                "RestartingBroker"
            } else {
                "WaitingForHealthyCluster"
            },
            format!(
                "{} of {} brokers run an old config{}",
                outdated.len(),
                o.pods.len(),
                if healthy {
                    String::new()
                } else {
                    "; waiting until every broker is ready with no under-replicated partitions"
                        .to_string()
                }
            ),
        ));
    }
    let all_ready = ready == allowed && !rolling;
    conditions.push(Condition::new(
        prev,
        o.now,
        generation,
        "Ready",
        all_ready,
        if all_ready {
            "BrokersReady"
        } else {
            "BrokersNotReady"
        },
        format!("{ready} of {allowed} brokers ready"),
    ));
    let status = ClusterStatus {
        conditions,
        observed_generation: generation,
        ready_brokers: ready,
        bootstrap: cluster_objects::bootstrap_address(c),
    };
    if prev != Some(&status) {
        actions.push(Action::UpdateStatus(status));
    }
    actions
}
