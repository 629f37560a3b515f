//! ListOffsets semantics seen through librdkafka: watermarks and
//! timestamp lookups, plus timestamp handling on the fetch path.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Timestamp;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_tests::{
    Broker, OP_TIMEOUT, assign, await_deliveries, consume_n, create_topic, enqueue,
    future_producer, stream_consumer, unique_name,
};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[tokio::test]
async fn fetch_watermarks_track_produced_records() {
    let broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("watermarks");
    create_topic(&bs, &topic, 2, &[])
        .await
        .expect("create topic");
    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assert_eq!(
        consumer
            .fetch_watermarks(&topic, 0, OP_TIMEOUT)
            .expect("watermarks of empty partition"),
        (0, 0)
    );

    let producer = future_producer(&bs, &[]).expect("producer");
    let mut futs = Vec::new();
    for i in 0..7 {
        let v = format!("w{i}");
        futs.push(
            enqueue(
                &producer,
                FutureRecord::to(&topic).partition(0).payload(v.as_bytes()),
            )
            .await
            .expect("enqueue"),
        );
    }
    await_deliveries(futs).await.expect("acknowledged");
    assert_eq!(
        consumer
            .fetch_watermarks(&topic, 0, OP_TIMEOUT)
            .expect("watermarks after produce"),
        (0, 7)
    );
    assert_eq!(
        consumer
            .fetch_watermarks(&topic, 1, OP_TIMEOUT)
            .expect("watermarks of untouched partition"),
        (0, 0),
        "partition 1 received nothing"
    );
}

#[tokio::test]
async fn offsets_for_times_returns_first_offset_at_or_after_timestamp() {
    let broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("bytime");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    // One hour ago, well within the default retention.
    let base = now_ms() - 3_600_000;
    let ts = |i: i64| base + i * 1000;

    // Records 0..5 in a single batch (one linger window), 5..10 one batch each.
    let producer = future_producer(&bs, &[("linger.ms", "200")]).expect("producer");
    let mut futs = Vec::new();
    for i in 0..5 {
        let v = format!("t{i}");
        futs.push(
            enqueue(
                &producer,
                FutureRecord::to(&topic)
                    .payload(v.as_bytes())
                    .timestamp(ts(i)),
            )
            .await
            .expect("enqueue"),
        );
    }
    await_deliveries(futs).await.expect("acknowledged");
    for i in 5..10 {
        let v = format!("t{i}");
        let fut = enqueue(
            &producer,
            FutureRecord::to(&topic)
                .payload(v.as_bytes())
                .timestamp(ts(i)),
        )
        .await
        .expect("enqueue");
        await_deliveries(vec![fut]).await.expect("acknowledged");
    }

    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    let lookup = |t: i64| -> Offset {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(t))
            .expect("valid timestamp");
        let res = consumer
            .offsets_for_times(tpl, OP_TIMEOUT)
            .expect("ListOffsets by timestamp");
        let elem = res.find_partition(&topic, 0).expect("partition in result");
        if let Err(e) = elem.error() {
            panic!("ListOffsets({t}) returned partition error {e}");
        }
        elem.offset()
    };
    assert_eq!(
        lookup(base - 10_000),
        Offset::Offset(0),
        "before everything"
    );
    assert_eq!(lookup(ts(0)), Offset::Offset(0), "exact first timestamp");
    assert_eq!(
        lookup(ts(2) + 500),
        Offset::Offset(3),
        "inside the first batch"
    );
    assert_eq!(
        lookup(ts(3)),
        Offset::Offset(3),
        "exact, inside the first batch"
    );
    assert_eq!(
        lookup(ts(7)),
        Offset::Offset(7),
        "exact, single-record batch"
    );
    assert_eq!(lookup(ts(6) + 1), Offset::Offset(7), "between batches");
    assert_eq!(
        lookup(ts(9) + 1),
        Offset::End,
        "after the last timestamp there is no offset (-1)"
    );

    // Fetched records carry the producer's CreateTime.
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, 10, Duration::from_secs(15))
        .await
        .expect("consume");
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(
            m.timestamp(),
            Timestamp::CreateTime(ts(i as i64)),
            "timestamp of offset {i}"
        );
    }
}

#[tokio::test]
async fn log_append_time_topic_overrides_producer_timestamps() {
    let broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("appendtime");
    create_topic(
        &bs,
        &topic,
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    )
    .await
    .expect("create topic");
    let before = now_ms();
    let producer = future_producer(&bs, &[]).expect("producer");
    let fut = enqueue(
        &producer,
        FutureRecord::to(&topic)
            .payload(b"old".as_slice())
            .timestamp(1_000),
    )
    .await
    .expect("enqueue");
    await_deliveries(vec![fut]).await.expect("acknowledged");
    let after = now_ms();

    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, 1, Duration::from_secs(15))
        .await
        .expect("consume");
    match msgs[0].timestamp() {
        Timestamp::LogAppendTime(t) => assert!(
            (before - 1000..=after + 1000).contains(&t),
            "append time {t} outside [{before}, {after}]"
        ),
        other => panic!("expected LogAppendTime, got {other:?}"),
    }
}

#[tokio::test]
async fn fetch_beyond_log_end_resets_to_earliest_with_auto_offset_reset() {
    let broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("oor");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let producer = future_producer(&bs, &[]).expect("producer");
    let mut futs = Vec::new();
    for i in 0..5 {
        let v = format!("oor-{i}");
        futs.push(
            enqueue(&producer, FutureRecord::to(&topic).payload(v.as_bytes()))
                .await
                .expect("enqueue"),
        );
    }
    await_deliveries(futs).await.expect("acknowledged");
    let consumer = stream_consumer(&bs, &[("auto.offset.reset", "earliest")]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Offset(1000))]).expect("assign");
    let msgs = consume_n(&consumer, 5, Duration::from_secs(15))
        .await
        .expect("consume after reset");
    let offsets: Vec<i64> = msgs.iter().map(|m| m.offset()).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
}
