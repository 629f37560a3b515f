//! The Cluster planner's table: create, converged, scaling up (new
//! brokers, then partitions spread onto them) and down (departing brokers
//! drained, the StatefulSet shrunk, then the brokers removed from the
//! quorum and the metadata), scale-down refused (replication factor,
//! brokers that cannot be asked), and a config change rolled one healthy
//! broker at a time.

use sluice_client::admin::PartitionMove;
use sluice_operator::cluster_objects::{CONFIG_HASH_ANNOTATION, desired};
use sluice_operator::cluster_plan::{Action, Observed, ObservedPlacement, ObservedPod, plan};
use sluice_operator::crd::{Cluster, ClusterSpec, ClusterStatus, SaslMechanism};

const NOW: &str = "2026-11-21T20:00:00Z";

fn cluster(brokers: i32) -> Cluster {
    let mut c = Cluster::new(
        "demo",
        ClusterSpec {
            brokers,
            rebalance_on_scale_up: true,
            image: "sluice:test".into(),
            config: Default::default(),
            storage: Default::default(),
            resources: None,
            service_monitor: false,
            listeners: Vec::new(),
            tls: None,
            sasl_mechanisms: vec![SaslMechanism::ScramSha512],
            authorization: None,
        },
    );
    c.metadata.namespace = Some("data".into());
    c.metadata.uid = Some("uid".into());
    c.metadata.generation = Some(1);
    c
}

fn hash_of(c: &Cluster) -> String {
    desired(c)
        .statefulset
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        .expect("hash")
}

fn pods(n: i32, hash: &str) -> Vec<ObservedPod> {
    (0..n)
        .map(|ordinal| ObservedPod {
            ordinal,
            ready: true,
            terminating: false,
            config_hash: hash.to_string(),
        })
        .collect()
}

fn observe(c: &Cluster, current: Option<i32>, pods: Vec<ObservedPod>) -> Observed<'_> {
    Observed {
        cluster: c,
        current_brokers: current,
        pods,
        under_replicated: Some(0),
        max_replication_factor: 1,
        brokers_with_replicas: vec![],
        replicas_known: true,
        placement: current.map(|n| ObservedPlacement {
            voters: (0..n).collect(),
            registered: (0..n).collect(),
            ..Default::default()
        }),
        now: NOW,
    }
}

fn a_move() -> PartitionMove {
    PartitionMove {
        topic: "t".into(),
        partition: 0,
        target: Some(vec![0, 1]),
    }
}

fn moves(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::MoveReplicas(m) => Some(m.len()),
            _ => None,
        })
        .sum()
}

fn placed(actions: &[Action]) -> Option<i32> {
    actions.iter().find_map(|a| match a {
        Action::UpdateStatus(s) => s.placed_brokers,
        _ => None,
    })
}

fn removals(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RemoveVoter(id) => Some(format!("voter {id}")),
            Action::UnregisterBroker(id) => Some(format!("broker {id}")),
            _ => None,
        })
        .collect()
}

fn placement<'o>(o: &'o mut Observed<'_>) -> &'o mut ObservedPlacement {
    o.placement.as_mut().expect("placement observed")
}

fn replicas(actions: &[Action]) -> i32 {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Apply(o) => o.statefulset.spec.as_ref().and_then(|s| s.replicas),
            _ => None,
        })
        .expect("objects applied")
}

fn deleted(actions: &[Action]) -> Vec<i32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { ordinal } => Some(*ordinal),
            _ => None,
        })
        .collect()
}

fn condition(actions: &[Action], type_: &str) -> Option<(String, String)> {
    actions.iter().find_map(|a| match a {
        Action::UpdateStatus(s) => s
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone())),
        _ => None,
    })
}

#[test]
fn create_then_converge() {
    let mut c = cluster(3);
    let a = plan(&observe(&c, None, vec![]));
    assert_eq!(replicas(&a), 3);
    assert_eq!(
        condition(&a, "Ready"),
        Some(("False".into(), "BrokersNotReady".into()))
    );
    let hash = hash_of(&c);
    let a = plan(&observe(&c, Some(3), pods(3, &hash)));
    assert_eq!(
        condition(&a, "Ready"),
        Some(("True".into(), "BrokersReady".into()))
    );
    // Converged: the status is already what it would write.
    c.status = a.iter().find_map(|x| match x {
        Action::UpdateStatus(s) => Some(s.clone()),
        _ => None,
    });
    let again = plan(&observe(&c, Some(3), pods(3, &hash)));
    assert!(
        again.iter().all(|x| matches!(x, Action::Apply(_))),
        "only the (idempotent) apply: {again:?}"
    );
}

#[test]
fn scale_down_below_replication_factor_is_refused() {
    let c = cluster(2);
    let mut o = observe(&c, Some(3), pods(3, &hash_of(&c)));
    o.max_replication_factor = 3;
    let a = plan(&o);
    assert_eq!(replicas(&a), 3, "the current size is kept");
    assert_eq!(
        condition(&a, "ScaleDownRefused"),
        Some(("True".into(), "ReplicasWouldBeLost".into()))
    );
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Event { warning: true, .. }))
    );
}

#[test]
fn scale_down_drains_the_departing_brokers_then_shrinks_then_removes_them() {
    let c = cluster(2);
    let hash = hash_of(&c);
    // Broker 2 holds a replica: it is moved off first, the size kept.
    let mut o = observe(&c, Some(3), pods(3, &hash));
    o.brokers_with_replicas = vec![0, 2];
    placement(&mut o).moves_to_spec = vec![a_move()];
    let a = plan(&o);
    assert_eq!((replicas(&a), moves(&a)), (3, 1));
    assert_eq!(
        condition(&a, "Scaling"),
        Some(("True".into(), "DrainingBrokers".into()))
    );
    assert!(condition(&a, "ScaleDownRefused").is_none());
    assert_eq!(
        condition(&a, "Ready"),
        Some(("False".into(), "Scaling".into()))
    );
    // Moves under way: wait, start nothing new.
    placement(&mut o).moves_in_progress = 1;
    let a = plan(&o);
    assert_eq!((replicas(&a), moves(&a)), (3, 0));
    assert_eq!(
        condition(&a, "Scaling"),
        Some(("True".into(), "DrainingBrokers".into()))
    );
    // Drained: the StatefulSet shrinks.
    o.brokers_with_replicas = vec![0, 1];
    placement(&mut o).moves_in_progress = 0;
    placement(&mut o).moves_to_spec = vec![];
    let a = plan(&o);
    assert_eq!((replicas(&a), moves(&a)), (2, 0));
    assert_eq!(
        condition(&a, "Scaling"),
        Some(("True".into(), "RemovingBrokers".into()))
    );
    // Pod 2 still there: it stays a voter until it is gone.
    let mut o = observe(&c, Some(2), pods(3, &hash));
    o.brokers_with_replicas = vec![0, 1];
    placement(&mut o).voters = vec![0, 1, 2];
    placement(&mut o).registered = vec![0, 1, 2];
    assert_eq!(removals(&plan(&o)), Vec::<String>::new());
    // Gone: out of the quorum, then out of the metadata.
    o.pods = pods(2, &hash);
    let a = plan(&o);
    assert_eq!(removals(&a), vec!["voter 2", "broker 2"]);
    assert_eq!(
        condition(&a, "Scaling"),
        Some(("True".into(), "RemovingBrokers".into()))
    );
    // Done: placed for two brokers, ready.
    let o = observe(&c, Some(2), pods(2, &hash));
    let a = plan(&o);
    assert!(condition(&a, "Scaling").is_none());
    assert_eq!(placed(&a), Some(2));
    assert_eq!(
        condition(&a, "Ready"),
        Some(("True".into(), "BrokersReady".into()))
    );
    // 5 -> 3: one broker at a time, never two voters down.
    let c = cluster(3);
    let hash = hash_of(&c);
    let mut o = observe(&c, Some(5), pods(5, &hash));
    o.brokers_with_replicas = vec![0, 1, 2];
    assert_eq!(replicas(&plan(&o)), 4, "the highest pod first");
    let mut o = observe(&c, Some(4), pods(4, &hash));
    placement(&mut o).voters = vec![0, 1, 2, 3, 4];
    placement(&mut o).registered = vec![0, 1, 2, 3, 4];
    let a = plan(&o);
    assert_eq!(replicas(&a), 4, "broker 4 leaves before 3 stops");
    assert_eq!(removals(&a), vec!["voter 4", "broker 4"]);
    // A topic placed on broker 3 after the drain: drained again first.
    let mut o = observe(&c, Some(4), pods(4, &hash));
    o.brokers_with_replicas = vec![0, 3];
    placement(&mut o).moves_to_spec = vec![a_move()];
    let a = plan(&o);
    assert_eq!((replicas(&a), moves(&a)), (4, 1));
}

#[test]
fn scale_down_with_replicas_to_move_is_refused_while_the_brokers_cannot_be_asked() {
    let c = cluster(2);
    let mut o = observe(&c, Some(3), pods(3, &hash_of(&c)));
    o.brokers_with_replicas = vec![0, 2];
    o.placement = None;
    let a = plan(&o);
    assert_eq!((replicas(&a), moves(&a)), (3, 0));
    assert!(condition(&a, "ScaleDownRefused").is_some());
}

#[test]
fn scale_down_is_refused_while_the_brokers_cannot_be_asked() {
    let c = cluster(2);
    let mut o = observe(&c, Some(3), pods(3, &hash_of(&c)));
    o.replicas_known = false;
    let a = plan(&o);
    assert_eq!(replicas(&a), 3);
    assert!(condition(&a, "ScaleDownRefused").is_some());

    let bigger = cluster(4);
    let mut o = observe(&bigger, Some(3), pods(3, &hash_of(&bigger)));
    o.replicas_known = false;
    assert_eq!(replicas(&plan(&o)), 4, "scaling up needs no answer");
}

#[test]
fn scale_up_adds_brokers_then_spreads_the_partitions_onto_them() {
    let c = placed_for_three(cluster(5));
    let hash = hash_of(&c);
    let mut o = observe(&c, Some(3), pods(3, &hash));
    placement(&mut o).moves_to_spec = vec![a_move()];
    let a = plan(&o);
    assert_eq!((replicas(&a), moves(&a)), (5, 0), "brokers first");
    assert_eq!(deleted(&a), Vec::<i32>::new());
    // Pods up, but broker 4 not yet a voter: wait.
    let mut o = observe(&c, Some(5), pods(5, &hash));
    placement(&mut o).voters = vec![0, 1, 2, 3];
    placement(&mut o).moves_to_spec = vec![a_move()];
    let a = plan(&o);
    assert_eq!(moves(&a), 0);
    assert_eq!(
        condition(&a, "Scaling"),
        Some(("True".into(), "WaitingForBrokers".into()))
    );
    // Every broker in: the partitions move, once.
    placement(&mut o).voters = vec![0, 1, 2, 3, 4];
    let a = plan(&o);
    assert_eq!(moves(&a), 1);
    assert_eq!(
        condition(&a, "Scaling"),
        Some(("True".into(), "MovingReplicas".into()))
    );
    placement(&mut o).moves_in_progress = 1;
    assert_eq!(moves(&plan(&o)), 0, "under way: nothing new");
    // Placed: recorded, and nothing moves again.
    placement(&mut o).moves_in_progress = 0;
    placement(&mut o).moves_to_spec = vec![];
    let a = plan(&o);
    assert_eq!(placed(&a), Some(5));
    assert!(condition(&a, "Scaling").is_none());

    // Without rebalanceOnScaleUp new brokers get only new topics.
    let mut manual = placed_for_three(cluster(5));
    manual.spec.rebalance_on_scale_up = false;
    let mut o = observe(&manual, Some(5), pods(5, &hash_of(&manual)));
    placement(&mut o).moves_to_spec = vec![a_move()];
    let a = plan(&o);
    assert_eq!((moves(&a), placed(&a)), (0, Some(5)));
}

/// A cluster whose partitions were placed for three brokers.
fn placed_for_three(mut c: Cluster) -> Cluster {
    c.status = Some(ClusterStatus {
        placed_brokers: Some(3),
        ..Default::default()
    });
    c
}

#[test]
fn a_config_change_rolls_one_healthy_broker_at_a_time() {
    let old = cluster(3);
    let mut new = old.clone();
    new.spec
        .config
        .insert("default-partitions".into(), "3".into());
    let (old_hash, new_hash) = (hash_of(&old), hash_of(&new));
    assert_ne!(old_hash, new_hash);

    // Healthy: restart the highest outdated ordinal, only that one.
    let a = plan(&observe(&new, Some(3), pods(3, &old_hash)));
    assert_eq!(deleted(&a), vec![2]);
    assert_eq!(
        condition(&a, "Rolling"),
        Some(("True".into(), "RestartingBroker".into()))
    );

    // Broker 2's pod is gone and not yet recreated: wait.
    let a = plan(&observe(&new, Some(3), pods(2, &old_hash)));
    assert_eq!(
        deleted(&a),
        Vec::<i32>::new(),
        "a missing pod is a down broker"
    );

    // Broker 2 is back on the new config but not ready yet: wait.
    let mut p = pods(3, &old_hash);
    p[2] = ObservedPod {
        ordinal: 2,
        ready: false,
        terminating: false,
        config_hash: new_hash.clone(),
    };
    let a = plan(&observe(&new, Some(3), p.clone()));
    assert_eq!(deleted(&a), Vec::<i32>::new());
    assert_eq!(
        condition(&a, "Rolling"),
        Some(("True".into(), "WaitingForHealthyCluster".into()))
    );

    // Ready again but partitions still under-replicated: wait.
    p[2].ready = true;
    let mut o = observe(&new, Some(3), p.clone());
    o.under_replicated = Some(4);
    assert_eq!(deleted(&plan(&o)), Vec::<i32>::new());

    // Unknown health counts as unhealthy.
    o.under_replicated = None;
    assert_eq!(deleted(&plan(&o)), Vec::<i32>::new());

    // Healthy: next one.
    o.under_replicated = Some(0);
    assert_eq!(deleted(&plan(&o)), vec![1]);

    // All on the new config: no restarts, Ready.
    let a = plan(&observe(&new, Some(3), pods(3, &new_hash)));
    assert_eq!(deleted(&a), Vec::<i32>::new());
    assert_eq!(
        condition(&a, "Ready"),
        Some(("True".into(), "BrokersReady".into()))
    );
}

#[test]
fn contradictory_security_settings_apply_nothing() {
    use sluice_operator::crd::{
        Authorization, ClusterListener, ClusterTls, ListenerAuthentication,
    };
    let listener = ClusterListener {
        name: "CLIENTS".into(),
        port: 9093,
        tls: true,
        authentication: ListenerAuthentication::Sasl,
    };
    let secured = |f: &dyn Fn(&mut Cluster)| {
        let mut c = cluster(3);
        c.spec.listeners = vec![listener.clone()];
        c.spec.tls = Some(ClusterTls {
            secret_name: "tls".into(),
        });
        c.spec.authorization = Some(Authorization::default());
        f(&mut c);
        c
    };
    assert_eq!(secured(&|_| {}).spec.security_problem(), None);
    for (why, c) in [
        ("no tls", secured(&|c| c.spec.tls = None)),
        ("no listener", secured(&|c| c.spec.listeners.clear())),
        (
            "operator's key",
            secured(&|c| {
                c.spec.config.insert("listeners".into(), "X://:1".into());
            }),
        ),
        (
            "bad super user",
            secured(&|c| {
                c.spec.authorization = Some(Authorization {
                    super_users: vec!["admin".into()],
                })
            }),
        ),
        ("port taken", secured(&|c| c.spec.listeners[0].port = 9644)),
    ] {
        let a = plan(&observe(&c, Some(3), pods(3, &hash_of(&c))));
        assert!(
            !a.iter().any(|x| matches!(x, Action::Apply(_))),
            "{why}: {a:?}"
        );
        assert!(
            a.iter().any(|x| matches!(x, Action::UpdateStatus(s)
                if s.conditions[0].reason == "InvalidSpec")),
            "{why}: {a:?}"
        );
    }
}
