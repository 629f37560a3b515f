//! Log lifecycle: segment rolling, restarts preserving topic metadata and
//! configs, and retention by size and by time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::admin::{ConfigSource, ResourceSpecifier};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::Offset;
use sluice_tests::{
    Broker, OP_TIMEOUT, admin_client, admin_opts, assign, await_deliveries, consume_n,
    create_topic, enqueue, future_producer, pseudo_random_bytes, segment_files, stream_consumer,
    unique_name,
};

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("life-{i:04}-").into_bytes();
    v.extend_from_slice(&pseudo_random_bytes(i as u64 + 7, 250));
    v
}

/// Produces `values[i]` one request at a time so each lands in its own batch.
async fn produce_each(
    bs: &str,
    topic: &str,
    range: std::ops::Range<usize>,
    timestamp: Option<i64>,
) {
    let producer = future_producer(bs, &[("linger.ms", "0")]).expect("producer");
    for i in range {
        let v = value(i);
        let mut rec = FutureRecord::to(topic).payload(v.as_slice());
        if let Some(ts) = timestamp {
            rec = rec.timestamp(ts);
        }
        let fut = enqueue(&producer, rec).await.expect("enqueue");
        let d = await_deliveries(vec![fut]).await.expect("acknowledged");
        assert_eq!(d[0].offset, i as i64);
    }
}

async fn read_range(bs: &str, topic: &str, from: i64, to: i64) {
    let consumer = stream_consumer(bs, &[]).expect("consumer");
    assign(&consumer, &[(topic, 0, Offset::Offset(from))]).expect("assign");
    let msgs = consume_n(&consumer, (to - from) as usize, Duration::from_secs(15))
        .await
        .expect("consume");
    for (m, o) in msgs.iter().zip(from..) {
        assert_eq!(m.offset(), o);
        assert!(
            m.payload() == Some(value(o as usize).as_slice()),
            "value at offset {o} differs"
        );
    }
}

/// Retention passes may run while records are still being produced, and the
/// pass after the last write can delete one more segment. With no more
/// writes retention reaches a fixed point: returns the watermarks once the
/// log start is at least `min_low` and has stayed put for five check
/// intervals (the brokers here check every 200 ms).
async fn settled_watermarks(bs: &str, topic: &str, min_low: i64, setting: &str) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = watermarks(bs, topic);
    let mut stable_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = watermarks(bs, topic);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if now.0 >= min_low && stable_since.elapsed() >= Duration::from_secs(1) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "log start {} (wanted >= {min_low}, settled) not reached within 10 s with {setting}",
            now.0
        );
    }
}

fn watermarks(bs: &str, topic: &str) -> (i64, i64) {
    stream_consumer(bs, &[])
        .expect("consumer")
        .fetch_watermarks(topic, 0, OP_TIMEOUT)
        .expect("watermarks")
}

#[tokio::test]
async fn small_segments_roll_and_are_served_across_boundaries_after_restart() {
    let mut broker = Broker::start().expect("broker should start");
    let topic = unique_name("roll");
    create_topic(&broker.bootstrap(), &topic, 1, &[("segment.bytes", "1024")])
        .await
        .expect("create topic");
    produce_each(&broker.bootstrap(), &topic, 0..30, None).await;
    let segments = segment_files(&broker.partition_dir(&topic, 0)).expect("segments");
    assert!(
        segments.len() >= 5,
        "segment.bytes=1024 with ~330-byte batches should roll often: {segments:?}"
    );
    read_range(&broker.bootstrap(), &topic, 0, 30).await;
    read_range(&broker.bootstrap(), &topic, 17, 30).await;

    broker.restart().expect("restart");
    assert_eq!(watermarks(&broker.bootstrap(), &topic), (0, 30));
    read_range(&broker.bootstrap(), &topic, 0, 30).await;
    produce_each(&broker.bootstrap(), &topic, 30..33, None).await;
    read_range(&broker.bootstrap(), &topic, 28, 33).await;
}

#[tokio::test]
async fn topic_partitions_and_configs_survive_restart() {
    let mut broker = Broker::start().expect("broker should start");
    let topic = unique_name("persist");
    create_topic(
        &broker.bootstrap(),
        &topic,
        3,
        &[("retention.ms", "3600000"), ("max.message.bytes", "500000")],
    )
    .await
    .expect("create topic");
    broker.restart().expect("restart");

    let admin = admin_client(&broker.bootstrap()).expect("admin");
    let md = admin
        .inner()
        .fetch_metadata(None, OP_TIMEOUT)
        .expect("metadata");
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic still exists after restart");
    assert_eq!(t.partitions().len(), 3);
    let mut described = admin
        .describe_configs([&ResourceSpecifier::Topic(&topic)], &admin_opts())
        .await
        .expect("DescribeConfigs");
    let res = described.remove(0).expect("describe result");
    for (name, v) in [("retention.ms", "3600000"), ("max.message.bytes", "500000")] {
        let e = res.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(e.value.as_deref(), Some(v), "{e:?}");
        assert_eq!(e.source, ConfigSource::DynamicTopic, "{e:?}");
    }
}

#[tokio::test]
async fn retention_bytes_deletes_oldest_segments_and_advances_log_start() {
    let broker = Broker::start_with_args(&["--retention-check-interval-ms", "200"])
        .expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("retbytes");
    create_topic(
        &bs,
        &topic,
        1,
        &[("segment.bytes", "1024"), ("retention.bytes", "2048")],
    )
    .await
    .expect("create topic");
    produce_each(&bs, &topic, 0..30, None).await;

    let (low, high) = settled_watermarks(&bs, &topic, 15, "retention.bytes=2048").await;
    assert_eq!(high, 30);
    assert!(
        low < 30,
        "retention must not remove the active segment's records"
    );
    // About 2 KiB of ~330-byte batches are kept (plus the active segment).
    assert!(low >= 15, "only {low} records removed; expected most of 30");
    read_range(&bs, &topic, low, 30).await;

    // Reading from before the log start resets to the earliest offset.
    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Offset(0))]).expect("assign");
    let first = consume_n(&consumer, 1, Duration::from_secs(15))
        .await
        .expect("consume");
    assert_eq!(
        first[0].offset(),
        low,
        "out-of-range fetch resets to log start"
    );
}

#[tokio::test]
async fn retention_ms_deletes_segments_with_expired_timestamps() {
    let broker = Broker::start_with_args(&["--retention-check-interval-ms", "200"])
        .expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("retms");
    create_topic(
        &bs,
        &topic,
        1,
        &[("segment.bytes", "1024"), ("retention.ms", "60000")],
    )
    .await
    .expect("create topic");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    // Ten records from two hours ago, then ten current ones.
    produce_each(&bs, &topic, 0..10, Some(now - 7_200_000)).await;
    produce_each(&bs, &topic, 10..20, None).await;

    let (low, high) = settled_watermarks(&bs, &topic, 1, "retention.ms=60000").await;
    assert_eq!(high, 20);
    assert!(low <= 10, "current records were deleted: log start {low}");
    read_range(&bs, &topic, low, 20).await;
}
