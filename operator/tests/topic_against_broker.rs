//! The Topic planner and the operator's Kafka admin client against a real
//! `sluice-broker` process: plan, execute, observe again through the Kafka
//! admin API, until the topic matches; then grow, drift, shrink and delete.
//! The Kubernetes side (finalizers, status writes) is not involved here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_operator::crd::{ClusterRef, DeletionPolicy, PluginBindings, Topic, TopicSpec};
use sluice_operator::kafka_admin::KafkaAdmin;
use sluice_operator::topic_plan::{Action, FINALIZER, Observed, plan};
use sluice_tests::{Broker, unique_name};

fn topic(name: &str, partitions: i32) -> Topic {
    let mut t = Topic::new(
        "t",
        TopicSpec {
            cluster: ClusterRef {
                name: "local".into(),
            },
            topic_name: Some(name.to_string()),
            partitions,
            replication_factor: 1,
            config: [("retention.ms".to_string(), "3600000".to_string())].into(),
            plugins: PluginBindings::default(),
            deletion_policy: DeletionPolicy::Delete,
        },
    );
    t.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    t.metadata.generation = Some(1);
    t
}

/// One reconcile: observe, plan, execute the broker writes, and carry the
/// planned status into the resource (as the status write would). Returns
/// the plan.
async fn reconcile(admin: &mut KafkaAdmin, t: &mut Topic) -> Vec<Action> {
    let brokers = admin.broker_ids().await.expect("brokers");
    let kafka = admin
        .describe_topic(t.spec.topic_name.as_deref().expect("name"))
        .await
        .expect("describe");
    let actions = plan(&Observed {
        topic: t,
        brokers: Some(brokers),
        kafka,
        older_claimant: None,
        plugin_limits: Default::default(),
        now: "2026-11-21T00:00:00Z",
    });
    for a in &actions {
        admin.execute(a).await.expect("execute");
        if let Action::UpdateStatus(s) = a {
            t.status = Some(s.clone());
        }
    }
    actions
}

fn writes(actions: &[Action]) -> Vec<&Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::UpdateStatus(_) | Action::Event { .. }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle_on_a_real_broker() {
    let broker = Broker::start().expect("broker");
    let mut admin = KafkaAdmin::connect(&broker.bootstrap())
        .await
        .expect("connect");
    let name = unique_name("op-topic");
    let mut t = topic(&name, 3);

    // Create, then nothing left to do.
    let first = reconcile(&mut admin, &mut t).await;
    assert!(
        matches!(writes(&first)[..], [Action::CreateTopic { .. }]),
        "{first:?}"
    );
    let observed = admin
        .describe_topic(&name)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(observed.assignment, vec![vec![0], vec![0], vec![0]]);
    assert_eq!(
        observed.configs.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(
        writes(&reconcile(&mut admin, &mut t).await),
        Vec::<&Action>::new()
    );

    // Grow.
    t.spec.partitions = 5;
    let grow = reconcile(&mut admin, &mut t).await;
    assert!(matches!(
        writes(&grow)[..],
        [Action::CreatePartitions { total: 5, .. }]
    ));
    let observed = admin
        .describe_topic(&name)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(observed.assignment.len(), 5);

    // Someone else changes a managed key and adds their own: only the
    // managed key is reverted.
    let mut drift = BTreeMap::new();
    drift.insert("retention.ms".to_string(), "5".to_string());
    drift.insert("segment.ms".to_string(), "600000".to_string());
    admin
        .alter_configs(&name, &drift, &[])
        .await
        .expect("drift");
    let revert = reconcile(&mut admin, &mut t).await;
    assert!(matches!(writes(&revert)[..], [Action::AlterConfigs { .. }]));
    let observed = admin
        .describe_topic(&name)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(
        observed.configs.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(
        observed.configs.get("segment.ms").map(String::as_str),
        Some("600000")
    );

    // A key removed from the spec is deleted because the operator set it.
    t.spec.config.clear();
    reconcile(&mut admin, &mut t).await;
    let observed = admin
        .describe_topic(&name)
        .await
        .expect("describe")
        .expect("exists");
    assert!(!observed.configs.contains_key("retention.ms"));
    assert!(observed.configs.contains_key("segment.ms"));

    // Shrinking is refused and writes nothing.
    t.spec.partitions = 2;
    let shrink = reconcile(&mut admin, &mut t).await;
    assert_eq!(writes(&shrink), Vec::<&Action>::new());
    let observed = admin
        .describe_topic(&name)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(observed.assignment.len(), 5);

    // Deletion with the Delete policy removes the Kafka topic.
    t.metadata.deletion_timestamp = Some(Time(Default::default()));
    let delete = reconcile(&mut admin, &mut t).await;
    assert_eq!(delete.last(), Some(&Action::RemoveFinalizer));
    assert!(
        admin
            .describe_topic(&name)
            .await
            .expect("describe")
            .is_none()
    );
}
