//! The Topic planner, case by case: each test is one row of the table the
//! issue asks for (create, converged, adopt, grow, refuse shrink and RF
//! change, drift revert, delete/retain, cluster gone, conflict, unmanaged).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_operator::crd::{ClusterRef, DeletionPolicy, PluginBindings, Topic, TopicSpec};
use sluice_operator::topic_plan::{
    Action, FINALIZER, Observed, ObservedTopic, UNMANAGED_ANNOTATION, plan,
};

const NOW: &str = "2026-11-21T20:00:00Z";
const LATER: &str = "2026-11-21T21:00:00Z";

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn topic(partitions: i32, rf: i32) -> Topic {
    let mut t = Topic::new(
        "orders",
        TopicSpec {
            cluster: ClusterRef {
                name: "demo".into(),
            },
            topic_name: None,
            partitions,
            replication_factor: rf,
            config: configs(&[("retention.ms", "1000")]),
            plugins: PluginBindings {
                partitioner: Some("tenant-router".into()),
                ..Default::default()
            },
            deletion_policy: DeletionPolicy::Delete,
        },
    );
    t.metadata.namespace = Some("ns".into());
    t.metadata.generation = Some(1);
    t
}

fn finalized(mut t: Topic) -> Topic {
    t.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    t
}

fn observe<'a>(t: &'a Topic, kafka: Option<ObservedTopic>, now: &'a str) -> Observed<'a> {
    Observed {
        topic: t,
        brokers: Some(vec![2, 0, 1]),
        kafka,
        older_claimant: None,
        plugin_limits: Default::default(),
        now,
    }
}

fn kafka(assignment: Vec<Vec<i32>>, pairs: &[(&str, &str)]) -> ObservedTopic {
    ObservedTopic {
        assignment,
        moving: Vec::new(),
        configs: configs(pairs),
    }
}

fn rule(partitions: usize, rf: usize) -> Vec<Vec<i32>> {
    (0..partitions)
        .map(|i| (0..rf).map(|j| ((i + j) % 3) as i32).collect())
        .collect()
}

fn status_of(actions: &[Action]) -> &sluice_operator::crd::TopicStatus {
    actions
        .iter()
        .find_map(|a| match a {
            Action::UpdateStatus(s) => Some(s),
            _ => None,
        })
        .expect("a status update")
}

fn ready(actions: &[Action]) -> (String, String) {
    let c = status_of(actions)
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    (c.status.clone(), c.reason.clone())
}

fn broker_writes(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::CreateTopic { .. }
                    | Action::CreatePartitions { .. }
                    | Action::AlterConfigs { .. }
                    | Action::DeleteTopic { .. }
            )
        })
        .count()
}

#[test]
fn create_places_replicas_by_rule_and_records_it() {
    let t = topic(4, 3);
    let a = plan(&observe(&t, None, NOW));
    assert_eq!(a[0], Action::AddFinalizer);
    assert_eq!(
        a[1],
        Action::CreateTopic {
            name: "orders".into(),
            assignment: rule(4, 3),
            configs: configs(&[
                ("retention.ms", "1000"),
                ("sluice.partitioner", "tenant-router")
            ]),
        }
    );
    assert!(matches!(&a[2], Action::Event { warning: false, reason, .. } if reason == "Created"));
    let s = status_of(&a);
    assert_eq!(s.assignment, rule(4, 3));
    assert_eq!(s.topic_name, "orders");
    assert_eq!(
        s.managed_config_keys,
        vec!["retention.ms", "sluice.partitioner"]
    );
    assert_eq!(ready(&a), ("True".into(), "Reconciled".into()));
}

#[test]
fn a_converged_topic_makes_zero_writes() {
    let mut t = finalized(topic(4, 3));
    let first = plan(&observe(
        &t,
        Some(kafka(
            rule(4, 3),
            &[
                ("retention.ms", "1000"),
                ("sluice.partitioner", "tenant-router"),
            ],
        )),
        NOW,
    ));
    t.status = Some(status_of(&first).clone());
    let again = plan(&observe(
        &t,
        Some(kafka(
            rule(4, 3),
            &[
                ("retention.ms", "1000"),
                ("sluice.partitioner", "tenant-router"),
            ],
        )),
        LATER,
    ));
    assert_eq!(again, vec![], "second reconcile of a converged topic");
}

#[test]
fn adopting_an_existing_topic_sets_only_differing_keys() {
    let t = finalized(topic(4, 3));
    let observed = kafka(
        vec![vec![1, 2, 0], vec![2, 0, 1], vec![0, 1, 2], vec![1, 2, 0]],
        &[("retention.ms", "5"), ("cleanup.policy", "delete")],
    );
    let a = plan(&observe(&t, Some(observed.clone()), NOW));
    assert_eq!(
        a[0],
        Action::AlterConfigs {
            name: "orders".into(),
            set: configs(&[
                ("retention.ms", "1000"),
                ("sluice.partitioner", "tenant-router")
            ]),
            delete: vec![],
        },
        "keys it never set (cleanup.policy) are left alone"
    );
    assert_eq!(
        status_of(&a).assignment,
        observed.assignment,
        "the real placement is recorded"
    );
    assert_eq!(ready(&a).0, "True");
}

#[test]
fn growing_places_new_partitions_by_the_same_rule() {
    let t = finalized(topic(6, 3));
    let a = plan(&observe(
        &t,
        Some(kafka(
            rule(4, 3),
            &[
                ("retention.ms", "1000"),
                ("sluice.partitioner", "tenant-router"),
            ],
        )),
        NOW,
    ));
    assert_eq!(
        a[0],
        Action::CreatePartitions {
            name: "orders".into(),
            total: 6,
            assignment: vec![vec![1, 2, 0], vec![2, 0, 1]],
        }
    );
    assert_eq!(status_of(&a).assignment, rule(6, 3));
    assert_eq!(broker_writes(&a), 1);
}

#[test]
fn shrinking_or_changing_rf_is_refused_without_broker_writes() {
    for (partitions, rf, words) in [(2, 3, "cannot shrink"), (4, 2, "cannot change to 2")] {
        let t = finalized(topic(partitions, rf));
        let a = plan(&observe(
            &t,
            Some(kafka(
                rule(4, 3),
                &[
                    ("retention.ms", "1000"),
                    ("sluice.partitioner", "tenant-router"),
                ],
            )),
            NOW,
        ));
        assert_eq!(broker_writes(&a), 0, "{words}");
        let s = status_of(&a);
        let ns = s
            .conditions
            .iter()
            .find(|c| c.type_ == "NotSupported")
            .expect("NotSupported");
        assert!(ns.message.contains(words), "{}", ns.message);
        assert_eq!(ready(&a), ("False".into(), "NotSupported".into()));
        assert!(
            a.iter()
                .any(|x| matches!(x, Action::Event { warning: true, .. }))
        );
    }
}

#[test]
fn drift_is_reverted_and_only_own_keys_are_deleted() {
    let mut t = finalized(topic(4, 3));
    t.spec.config = configs(&[("retention.ms", "1000")]);
    t.spec.plugins.partitioner = None;
    t.status = Some(sluice_operator::crd::TopicStatus {
        managed_config_keys: vec!["retention.ms".into(), "sluice.partitioner".into()],
        ..Default::default()
    });
    let a = plan(&observe(
        &t,
        Some(kafka(
            rule(4, 3),
            &[
                ("retention.ms", "9"),
                ("sluice.partitioner", "old"),
                ("segment.ms", "7"),
            ],
        )),
        NOW,
    ));
    assert_eq!(
        a[0],
        Action::AlterConfigs {
            name: "orders".into(),
            set: configs(&[("retention.ms", "1000")]),
            delete: vec!["sluice.partitioner".into()],
        }
    );
    assert_eq!(status_of(&a).managed_config_keys, vec!["retention.ms"]);
}

#[test]
fn deletion_follows_the_policy_and_never_sticks() {
    let deleting = |policy: DeletionPolicy| {
        let mut t = finalized(topic(4, 3));
        t.spec.deletion_policy = policy;
        t.metadata.deletion_timestamp = Some(Time(Default::default()));
        t
    };
    let present = || Some(kafka(rule(4, 3), &[]));

    let t = deleting(DeletionPolicy::Delete);
    let a = plan(&observe(&t, present(), NOW));
    assert_eq!(
        a[0],
        Action::DeleteTopic {
            name: "orders".into()
        }
    );
    assert_eq!(a.last(), Some(&Action::RemoveFinalizer));

    let t = deleting(DeletionPolicy::Retain);
    assert_eq!(
        plan(&observe(&t, present(), NOW)),
        vec![Action::RemoveFinalizer]
    );

    let t = deleting(DeletionPolicy::Delete);
    let mut gone = observe(&t, None, NOW);
    gone.brokers = None;
    assert_eq!(
        plan(&gone),
        vec![Action::RemoveFinalizer],
        "cluster already gone"
    );

    let mut t = deleting(DeletionPolicy::Delete);
    t.metadata.finalizers = None;
    assert_eq!(
        plan(&observe(&t, present(), NOW)),
        vec![],
        "nothing left to do"
    );
}

#[test]
fn a_younger_claimant_gets_a_conflict_and_writes_nothing() {
    let t = topic(4, 3);
    let mut o = observe(&t, Some(kafka(rule(4, 3), &[("retention.ms", "9")])), NOW);
    o.older_claimant = Some("orders-original".into());
    let a = plan(&o);
    assert_eq!(broker_writes(&a), 0);
    let s = status_of(&a);
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "ResourceConflict" && c.status == "True")
    );
    assert_eq!(ready(&a), ("False".into(), "ResourceConflict".into()));
    // And deleting it never deletes the other resource's topic.
    let mut t = finalized(topic(4, 3));
    t.metadata.deletion_timestamp = Some(Time(Default::default()));
    let mut o = observe(&t, Some(kafka(rule(4, 3), &[])), NOW);
    o.older_claimant = Some("orders-original".into());
    assert_eq!(plan(&o), vec![Action::RemoveFinalizer]);
}

#[test]
fn unmanaged_topics_and_missing_clusters_get_status_only() {
    let mut t = topic(4, 3);
    t.metadata.annotations = Some([(UNMANAGED_ANNOTATION.to_string(), "false".to_string())].into());
    let a = plan(&observe(&t, Some(kafka(rule(2, 1), &[])), NOW));
    assert_eq!(broker_writes(&a), 0);
    assert!(!a.contains(&Action::AddFinalizer));
    assert_eq!(ready(&a), ("False".into(), "Unmanaged".into()));

    let t = finalized(topic(4, 3));
    let mut o = observe(&t, None, NOW);
    o.brokers = None;
    let a = plan(&o);
    assert_eq!(broker_writes(&a), 0);
    assert_eq!(ready(&a), ("False".into(), "ClusterNotFound".into()));
}

#[test]
fn too_few_brokers_is_a_condition_not_a_write() {
    let t = finalized(topic(4, 5));
    let a = plan(&observe(&t, None, NOW));
    assert_eq!(broker_writes(&a), 0);
    assert_eq!(ready(&a), ("False".into(), "InvalidPlacement".into()));
}
