//! Admin APIs through librdkafka's AdminClient: CreateTopics (with configs
//! and replica assignments), DeleteTopics, CreatePartitions,
//! DescribeConfigs and AlterConfigs.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::admin::{
    AdminClient, AlterConfig, ConfigResource, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::Offset;
use rdkafka::types::RDKafkaErrorCode;
use sluice_tests::{
    Broker, OP_TIMEOUT, admin_client, admin_opts, assign, await_deliveries, consume_n,
    create_topic, enqueue, future_producer, stream_consumer, unique_name,
};

fn start() -> Broker {
    Broker::start().expect("broker should start")
}

async fn describe_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) -> ConfigResource {
    let mut results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &admin_opts())
        .await
        .expect("DescribeConfigs request");
    assert_eq!(results.len(), 1);
    results
        .remove(0)
        .unwrap_or_else(|code| panic!("DescribeConfigs({topic}) failed: {code:?}"))
}

fn partition_count(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Option<usize> {
    // Metadata for all topics: asking for one topic by name could
    // auto-create it.
    let md = admin
        .inner()
        .fetch_metadata(None, OP_TIMEOUT)
        .expect("metadata request");
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
}

#[tokio::test]
async fn alter_configs_is_visible_in_describe_configs_as_dynamic_topic_config() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let topic = unique_name("cfg");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");

    let before = describe_topic(&admin, &topic).await;
    let retention = before
        .get("retention.ms")
        .expect("retention.ms is described even when not overridden");
    assert!(retention.value.is_some(), "{retention:?}");
    assert_ne!(
        retention.source,
        ConfigSource::DynamicTopic,
        "not overridden yet: {retention:?}"
    );

    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topic))
        .set("retention.ms", "123456")
        .set("max.message.bytes", "2000000");
    let results = admin
        .alter_configs([&alter], &admin_opts())
        .await
        .expect("AlterConfigs request");
    for r in results {
        r.unwrap_or_else(|(res, code)| panic!("AlterConfigs({res:?}) failed: {code:?}"));
    }

    let after = describe_topic(&admin, &topic).await;
    for (name, value) in [("retention.ms", "123456"), ("max.message.bytes", "2000000")] {
        let entry = after
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from DescribeConfigs"));
        assert_eq!(entry.value.as_deref(), Some(value), "{entry:?}");
        assert_eq!(entry.source, ConfigSource::DynamicTopic, "{entry:?}");
        assert!(!entry.is_default, "{entry:?}");
    }
}

#[tokio::test]
async fn create_topic_configs_are_described_as_dynamic_topic_configs() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let topic = unique_name("cfgcreate");
    create_topic(
        &bs,
        &topic,
        1,
        &[("segment.bytes", "1048576"), ("cleanup.policy", "delete")],
    )
    .await
    .expect("create topic");
    let described = describe_topic(&admin, &topic).await;
    let seg = described.get("segment.bytes").expect("segment.bytes");
    assert_eq!(seg.value.as_deref(), Some("1048576"));
    assert_eq!(seg.source, ConfigSource::DynamicTopic);
}

#[tokio::test]
async fn alter_configs_rejects_invalid_value() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let topic = unique_name("cfgbad");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let alter =
        AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("retention.ms", "not-a-number");
    let results = admin
        .alter_configs([&alter], &admin_opts())
        .await
        .expect("AlterConfigs request");
    // rust-rdkafka 0.38 drops per-resource AlterConfigs errors (it always
    // reports Ok), so an error is checked if present and the real assertion
    // is that the value was not applied.
    if let Err((_, code)) = &results[0] {
        assert_eq!(*code, RDKafkaErrorCode::InvalidConfig);
    }
    let described = describe_topic(&admin, &topic).await;
    let retention = described.get("retention.ms").expect("retention.ms");
    assert_ne!(
        retention.value.as_deref(),
        Some("not-a-number"),
        "invalid value was applied: {retention:?}"
    );
    assert_ne!(
        retention.source,
        ConfigSource::DynamicTopic,
        "{retention:?}"
    );
}

/// Kafka's (non-incremental) AlterConfigs replaces the whole set of dynamic
/// configs of a resource: configs not mentioned revert to their defaults.
#[tokio::test]
async fn alter_configs_replaces_all_dynamic_topic_configs() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let topic = unique_name("cfgreplace");
    create_topic(&bs, &topic, 1, &[("segment.bytes", "1048576")])
        .await
        .expect("create topic");
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("retention.ms", "60000");
    for r in admin
        .alter_configs([&alter], &admin_opts())
        .await
        .expect("AlterConfigs request")
    {
        r.unwrap_or_else(|(res, code)| panic!("AlterConfigs({res:?}) failed: {code:?}"));
    }
    let described = describe_topic(&admin, &topic).await;
    let seg = described.get("segment.bytes").expect("segment.bytes");
    assert_ne!(
        seg.source,
        ConfigSource::DynamicTopic,
        "segment.bytes should have reverted to its default: {seg:?}"
    );
    let retention = described.get("retention.ms").expect("retention.ms");
    assert_eq!(retention.value.as_deref(), Some("60000"));
}

#[tokio::test]
async fn create_partitions_increases_partition_count_and_new_partition_accepts_records() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let topic = unique_name("grow");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    assert_eq!(partition_count(&admin, &topic), Some(1));

    let results = admin
        .create_partitions([&NewPartitions::new(&topic, 3)], &admin_opts())
        .await
        .expect("CreatePartitions request");
    for r in results {
        r.unwrap_or_else(|(t, code)| panic!("CreatePartitions({t}) failed: {code:?}"));
    }
    assert_eq!(partition_count(&admin, &topic), Some(3));

    let producer = future_producer(&bs, &[]).expect("producer");
    let fut = enqueue(
        &producer,
        FutureRecord::to(&topic)
            .partition(2)
            .payload(b"in new partition".as_slice()),
    )
    .await
    .expect("enqueue");
    let d = await_deliveries(vec![fut]).await.expect("acknowledged");
    assert_eq!((d[0].partition, d[0].offset), (2, 0));
    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 2, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, 1, Duration::from_secs(15))
        .await
        .expect("consume");
    assert_eq!(msgs[0].payload(), Some(b"in new partition".as_slice()));
}

#[tokio::test]
async fn create_partitions_rejects_decrease() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let topic = unique_name("shrink");
    create_topic(&bs, &topic, 3, &[])
        .await
        .expect("create topic");
    let results = admin
        .create_partitions([&NewPartitions::new(&topic, 2)], &admin_opts())
        .await
        .expect("CreatePartitions request");
    match &results[0] {
        Err((_, code)) => assert_eq!(*code, RDKafkaErrorCode::InvalidPartitions),
        Ok(t) => panic!("shrinking {t} to 2 partitions was accepted"),
    }
    assert_eq!(partition_count(&admin, &topic), Some(3));
}

#[tokio::test]
async fn delete_topic_removes_it_from_metadata_and_disk() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let topic = unique_name("doomed");
    create_topic(&bs, &topic, 2, &[])
        .await
        .expect("create topic");
    sluice_tests::roundtrip_once(&bs, &topic, b"soon gone")
        .await
        .expect("round trip before delete");
    assert!(broker.partition_dir(&topic, 0).exists() || broker.partition_dir(&topic, 1).exists());

    let results = admin
        .delete_topics(&[&topic], &admin_opts())
        .await
        .expect("DeleteTopics request");
    for r in results {
        r.unwrap_or_else(|(t, code)| panic!("DeleteTopics({t}) failed: {code:?}"));
    }
    assert_eq!(
        partition_count(&admin, &topic),
        None,
        "topic still in metadata"
    );

    // Kafka deletes files asynchronously; allow a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = (0..2)
            .map(|p| broker.partition_dir(&topic, p))
            .filter(|d| d.exists())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partition directories not removed: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn delete_unknown_topic_fails_with_unknown_topic() {
    let broker = start();
    let admin = admin_client(&broker.bootstrap()).expect("admin");
    let results = admin
        .delete_topics(&["does-not-exist"], &admin_opts())
        .await
        .expect("DeleteTopics request");
    match &results[0] {
        Err((_, code)) => assert_eq!(*code, RDKafkaErrorCode::UnknownTopicOrPartition),
        Ok(t) => panic!("deleting unknown topic {t} succeeded"),
    }
}

#[tokio::test]
async fn create_existing_topic_fails_with_topic_already_exists() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let topic = unique_name("twice");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let results = admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &admin_opts(),
        )
        .await
        .expect("CreateTopics request");
    match &results[0] {
        Err((_, code)) => assert_eq!(*code, RDKafkaErrorCode::TopicAlreadyExists),
        Ok(t) => panic!("second create of {t} succeeded"),
    }
}

#[tokio::test]
async fn create_topic_with_explicit_replica_assignment_on_own_node_id() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let node = broker.node_id().expect("node id from metadata");
    let topic = unique_name("assigned");
    let assignment: [&[i32]; 2] = [&[node], &[node]];
    let results = admin
        .create_topics(
            [&NewTopic::new(
                &topic,
                2,
                TopicReplication::Variable(&assignment),
            )],
            &admin_opts(),
        )
        .await
        .expect("CreateTopics request");
    for r in results {
        r.unwrap_or_else(|(t, code)| panic!("CreateTopics({t}) with assignment failed: {code:?}"));
    }
    let md = admin
        .inner()
        .fetch_metadata(None, OP_TIMEOUT)
        .expect("metadata");
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic in metadata");
    assert_eq!(t.partitions().len(), 2);
    for p in t.partitions() {
        assert_eq!(p.leader(), node, "partition {} leader", p.id());
        assert_eq!(p.replicas(), &[node], "partition {} replicas", p.id());
        assert_eq!(p.isr(), &[node], "partition {} isr", p.id());
    }
    sluice_tests::roundtrip_once(&bs, &topic, b"assigned")
        .await
        .expect("round trip on assigned topic");
}

#[tokio::test]
async fn create_topic_with_assignment_to_unknown_broker_fails() {
    let broker = start();
    let bs = broker.bootstrap();
    let admin = admin_client(&bs).expect("admin");
    let node = broker.node_id().expect("node id from metadata");
    let topic = unique_name("badassign");
    let other = node + 1000;
    let assignment: [&[i32]; 1] = [&[other]];
    let results = admin
        .create_topics(
            [&NewTopic::new(
                &topic,
                1,
                TopicReplication::Variable(&assignment),
            )],
            &admin_opts(),
        )
        .await
        .expect("CreateTopics request");
    match &results[0] {
        Err((_, code)) => assert!(
            matches!(
                code,
                RDKafkaErrorCode::InvalidReplicaAssignment | RDKafkaErrorCode::BrokerNotAvailable
            ),
            "unexpected error code {code:?}"
        ),
        Ok(t) => panic!("topic {t} assigned to nonexistent broker {other} was created"),
    }
}
