//! What the Cluster controller should do, as a pure function of what it
//! observed: the Cluster, its broker pods, the brokers' health and the
//! topics placed on them. The objects themselves come from
//! `cluster_objects`; this decides how many brokers they may have, which
//! broker to restart next in a rolling change, and the conditions.
//!
//! Scaling is a sequence of steps, each taken once the previous one is
//! seen done, so a reconcile that stops half-way resumes where it was:
//! down: move every replica off the departing brokers (one batch of
//! reassignments, then wait), shrink the StatefulSet, then, once their
//! pods are gone, remove them from the controller quorum and unregister
//! them; up: grow the StatefulSet (new brokers join the quorum on their
//! own), then, with `rebalanceOnScaleUp`, once every broker is ready and
//! a voter, move partitions to the placement over all brokers.
//! `status.placedBrokers` records the count the partitions are placed for.

use sluice_client::admin::PartitionMove;

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
    /// Membership and moves, from the brokers (`None` if they cannot be
    /// asked: no scaling step is taken).
    pub placement: Option<ObservedPlacement>,
    pub now: &'a str,
}

/// The cluster's membership and partition moves, as the brokers report them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPlacement {
    /// Partition moves under way.
    pub moves_in_progress: usize,
    /// The moves that would place every partition (internal topics too)
    /// on brokers `0..spec.brokers` (`sluice_client::admin::placement_moves`);
    /// empty when placed so.
    pub moves_to_spec: Vec<PartitionMove>,
    /// Voters of the controller quorum.
    pub voters: Vec<i32>,
    /// Brokers registered in the cluster's metadata.
    pub registered: Vec<i32>,
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
    /// Start these partition reassignments (AlterPartitionReassignments).
    MoveReplicas(Vec<PartitionMove>),
    /// Take a departed broker out of the controller quorum (RemoveRaftVoter).
    RemoveVoter(i32),
    /// Take a departed broker out of the metadata (UnregisterBroker).
    UnregisterBroker(i32),
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
    if o.placement.is_none() && !departing(o).is_empty() {
        return Some(format!(
            "cannot scale to {want} brokers: brokers {:?} still hold replicas and the brokers cannot be asked to move them",
            departing(o)
        ));
    }
    None
}

/// Brokers at or above `spec.brokers` that still hold replicas.
fn departing(o: &Observed<'_>) -> Vec<i32> {
    o.brokers_with_replicas
        .iter()
        .copied()
        .filter(|b| *b >= o.cluster.spec.brokers)
        .collect()
}

/// The scaling step to take now, if any: its actions, the StatefulSet's
/// allowed size, and the `Scaling` condition's reason and message.
struct Step {
    actions: Vec<Action>,
    allowed: i32,
    progress: Option<(&'static str, String)>,
    placed: Option<i32>,
}

fn scaling_step(o: &Observed<'_>, refused: bool) -> Step {
    let want = o.cluster.spec.brokers;
    let prev_placed = o.cluster.status.as_ref().and_then(|s| s.placed_brokers);
    let Some(have) = o.current_brokers else {
        // First apply: topics will be placed over the brokers it makes.
        return Step {
            actions: Vec::new(),
            allowed: want,
            progress: None,
            placed: Some(want),
        };
    };
    let placed = prev_placed.unwrap_or(have);
    let mut step = Step {
        actions: Vec::new(),
        allowed: if refused { have } else { want },
        progress: None,
        placed: Some(placed),
    };
    if refused {
        return step;
    }
    let Some(p) = &o.placement else {
        return step;
    };
    // Down, first: nothing may leave with the departing brokers (also a
    // topic placed on them after they were drained).
    let departing = departing(o);
    if !departing.is_empty() && want <= have {
        step.allowed = have;
        step.progress = Some(if p.moves_in_progress > 0 {
            (
                "DrainingBrokers",
                format!(
                    "moving replicas off brokers {departing:?}: {} partition moves under way",
                    p.moves_in_progress
                ),
            )
        } else {
            step.actions
                .push(Action::MoveReplicas(p.moves_to_spec.clone()));
            step.actions.push(Action::Event {
                warning: false,
                reason: "DrainingBrokers".into(),
                message: format!(
                    "moving {} partitions off brokers {departing:?} before scaling to {want}",
                    p.moves_to_spec.len()
                ),
            });
            (
                "DrainingBrokers",
                format!("moving replicas off brokers {departing:?}"),
            )
        });
        return step;
    }
    // Then one broker at a time, so that at most one voter is ever down:
    // the StatefulSet stops its highest pod; once that pod is gone the
    // broker leaves the quorum and the metadata; then the next.
    let pods_gone = o.pods.iter().all(|pod| pod.ordinal < have);
    let leftover_voters: Vec<i32> = p.voters.iter().copied().filter(|v| *v >= have).collect();
    let leftover: Vec<i32> = p
        .registered
        .iter()
        .copied()
        .filter(|b| *b >= have)
        .collect();
    if !leftover_voters.is_empty() || !leftover.is_empty() {
        step.allowed = have;
        if pods_gone {
            step.actions
                .extend(leftover_voters.iter().map(|v| Action::RemoveVoter(*v)));
            step.actions
                .extend(leftover.iter().map(|b| Action::UnregisterBroker(*b)));
        }
        step.progress = Some((
            "RemovingBrokers",
            format!(
                "removing brokers {:?} from the controller quorum and the metadata",
                leftover_voters
                    .iter()
                    .chain(&leftover)
                    .collect::<std::collections::BTreeSet<_>>()
            ),
        ));
        return step;
    }
    if want < have {
        step.allowed = have - 1;
        step.progress = Some(("RemovingBrokers", format!("stopping broker {}", have - 1)));
        return step;
    }
    if placed == want || have != want {
        return step;
    }
    if want < placed || !o.cluster.spec.rebalance_on_scale_up {
        // Scaled down (drained already), or new brokers get new topics only.
        step.placed = Some(want);
        return step;
    }
    // Up: once every broker is ready and a voter, spread the partitions.
    let ready = o.pods.iter().filter(|p| p.ready && !p.terminating).count() as i32;
    let voters_all = (0..want).all(|b| p.voters.contains(&b));
    if ready < want || !voters_all {
        step.progress = Some((
            "WaitingForBrokers",
            format!(
                "{ready} of {want} brokers ready, voters {:?}; partitions move once all have joined",
                p.voters
            ),
        ));
    } else if p.moves_in_progress > 0 {
        step.progress = Some((
            "MovingReplicas",
            format!(
                "{} partition moves onto the new brokers under way",
                p.moves_in_progress
            ),
        ));
    } else if p.moves_to_spec.is_empty() {
        step.placed = Some(want);
    } else {
        step.actions
            .push(Action::MoveReplicas(p.moves_to_spec.clone()));
        step.actions.push(Action::Event {
            warning: false,
            reason: "MovingReplicas".into(),
            message: format!(
                "moving {} partitions to spread them over {want} brokers",
                p.moves_to_spec.len()
            ),
        });
        step.progress = Some((
            "MovingReplicas",
            format!(
                "moving {} partitions onto the new brokers",
                p.moves_to_spec.len()
            ),
        ));
    }
    step
}

/// Whether a scaling step is under way (the controller then looks again
/// soon rather than at the next resync).
pub fn scaling(o: &Observed<'_>) -> bool {
    o.cluster.spec.security_problem().is_none()
        && scaling_step(o, scale_down_refusal(o).is_some())
            .progress
            .is_some()
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
            placed_brokers: prev.and_then(|s| s.placed_brokers),
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
    let step = scaling_step(o, refusal.is_some());
    let allowed = step.allowed;
    let scaling = step.progress.is_some();
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
    // Not while scaling: a restart then could take a second voter down.
    let healthy = ready == allowed
        && o.pods.len() as i32 == allowed
        && o.pods.iter().all(|p| !p.terminating)
        && o.under_replicated == Some(0)
        && !scaling;
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
    if let Some((reason, message)) = step.progress {
        conditions.push(Condition::new(
            prev, o.now, generation, "Scaling", true, reason, message,
        ));
    }
    actions.extend(step.actions);
    let all_ready = ready == allowed && !rolling && !scaling;
    conditions.push(Condition::new(
        prev,
        o.now,
        generation,
        "Ready",
        all_ready,
        if all_ready {
            "BrokersReady"
        } else if scaling {
            "Scaling"
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
        placed_brokers: step.placed,
    };
    if prev != Some(&status) {
        actions.push(Action::UpdateStatus(status));
    }
    actions
}
