//! Produce/consume round trips through librdkafka: codecs, headers, null
//! keys/values, large records, many partitions, acks levels, and fetching
//! from the middle of a stored batch.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::Offset;
use sluice_tests::{
    Broker, assign, await_deliveries, consume_n, create_topic, drain_extra, enqueue,
    future_producer, header_pairs, pseudo_random_bytes, read_batches, segment_files,
    stream_consumer, unique_name,
};

const CONSUME_TIMEOUT: Duration = Duration::from_secs(15);

fn start() -> Broker {
    Broker::start().expect("broker should start")
}

/// Produces `n` compressible records with `compression.type=codec` in as few
/// batches as linger allows, reads them back, and checks the codec id stored
/// in the first on-disk batch (the broker stores batches as received).
async fn roundtrip_with_codec(codec: &str, codec_id: i16) {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name(&format!("codec-{codec}"));
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");

    let producer = future_producer(&bs, &[("compression.type", codec), ("linger.ms", "50")])
        .expect("producer");
    let n = 300;
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            let key = format!("key-{i}").into_bytes();
            let value =
                format!("value-{i}-{}", "the quick brown fox ".repeat(10 + i % 7)).into_bytes();
            (key, value)
        })
        .collect();
    let mut futs = Vec::new();
    for (k, v) in &records {
        let rec = FutureRecord::to(&topic)
            .key(k.as_slice())
            .payload(v.as_slice());
        futs.push(enqueue(&producer, rec).await.expect("enqueue"));
    }
    let deliveries = await_deliveries(futs)
        .await
        .expect("all records acknowledged");
    for (i, d) in deliveries.iter().enumerate() {
        assert_eq!(d.offset, i as i64, "delivery offsets are sequential");
    }

    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, n, CONSUME_TIMEOUT)
        .await
        .expect("consume all records");
    for (i, (m, (k, v))) in msgs.iter().zip(&records).enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert_eq!(m.key(), Some(k.as_slice()), "key of offset {i}");
        assert_eq!(m.payload(), Some(v.as_slice()), "value of offset {i}");
    }

    let segments = segment_files(&broker.partition_dir(&topic, 0)).expect("segments");
    let first = segments.first().expect("at least one segment file");
    let batches = read_batches(first).expect("parse segment");
    assert!(
        !batches.is_empty(),
        "segment {} has no batches",
        first.display()
    );
    for b in &batches {
        assert_eq!(
            b.attributes & 0x7,
            codec_id,
            "batch at offset {} stored with codec {} but producer used {codec}{}",
            b.base_offset,
            b.attributes & 0x7,
            if codec == "lz4" {
                " (librdkafka sends LZ4 only if ApiVersions advertises FindCoordinator, \
                 see RD_KAFKA_FEATURE_LZ4 in rdkafka_feature.c)"
            } else {
                ""
            }
        );
    }
}

#[tokio::test]
async fn roundtrip_uncompressed_batches() {
    roundtrip_with_codec("none", 0).await;
}

#[tokio::test]
async fn roundtrip_gzip_batches_stored_compressed() {
    roundtrip_with_codec("gzip", 1).await;
}

#[tokio::test]
async fn roundtrip_snappy_batches_stored_compressed() {
    roundtrip_with_codec("snappy", 2).await;
}

#[tokio::test]
async fn roundtrip_lz4_batches_stored_compressed() {
    roundtrip_with_codec("lz4", 3).await;
}

#[tokio::test]
async fn roundtrip_zstd_batches_stored_compressed() {
    roundtrip_with_codec("zstd", 4).await;
}

#[tokio::test]
async fn headers_roundtrip_in_order_with_duplicate_keys_and_null_values() {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name("headers");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");

    let expected: Vec<(&str, Option<&[u8]>)> = vec![
        ("trace-id", Some(b"abc123".as_slice())),
        ("dup", Some(b"first".as_slice())),
        ("other", Some(b"".as_slice())),
        ("dup", Some(b"second".as_slice())),
        ("null-value", None),
        ("dup", Some(b"third".as_slice())),
        ("binary", Some([0u8, 255, 1, 254].as_slice())),
    ];
    let mut headers = OwnedHeaders::new();
    for (key, value) in &expected {
        headers = headers.insert(Header { key, value: *value });
    }
    let producer = future_producer(&bs, &[]).expect("producer");
    let fut = enqueue(
        &producer,
        FutureRecord::to(&topic)
            .key(b"k".as_slice())
            .payload(b"with headers".as_slice())
            .headers(headers),
    )
    .await
    .expect("enqueue");
    await_deliveries(vec![fut]).await.expect("acknowledged");

    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, 1, CONSUME_TIMEOUT)
        .await
        .expect("consume");
    let got = header_pairs(&msgs[0]);
    let want: Vec<(String, Option<Vec<u8>>)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
        .collect();
    // librdkafka may expose an empty value as null; compare "other" loosely.
    assert_eq!(got.len(), want.len(), "header count: got {got:?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.0, w.0, "header #{i} key");
        if w.0 == "other" {
            assert!(
                g.1.as_deref().unwrap_or_default().is_empty(),
                "empty header value"
            );
        } else {
            assert_eq!(g.1, w.1, "header #{i} ({}) value", w.0);
        }
    }
}

#[tokio::test]
async fn null_keys_and_null_values_roundtrip_as_null() {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name("nulls");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let producer = future_producer(&bs, &[]).expect("producer");

    let futs = vec![
        // null key, null value
        enqueue(&producer, FutureRecord::<[u8], [u8]>::to(&topic))
            .await
            .expect("enqueue"),
        // key, null value (tombstone)
        enqueue(
            &producer,
            FutureRecord::<[u8], [u8]>::to(&topic).key(b"tomb".as_slice()),
        )
        .await
        .expect("enqueue"),
        // null key, value
        enqueue(
            &producer,
            FutureRecord::<[u8], [u8]>::to(&topic).payload(b"no key".as_slice()),
        )
        .await
        .expect("enqueue"),
    ];
    await_deliveries(futs).await.expect("acknowledged");

    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, 3, CONSUME_TIMEOUT)
        .await
        .expect("consume");
    assert_eq!(msgs[0].key(), None);
    assert_eq!(msgs[0].payload(), None);
    assert_eq!(msgs[1].key(), Some(b"tomb".as_slice()));
    assert_eq!(msgs[1].payload(), None);
    assert_eq!(msgs[2].key(), None);
    assert_eq!(msgs[2].payload(), Some(b"no key".as_slice()));
}

#[tokio::test]
async fn one_mebibyte_records_roundtrip_with_raised_limits() {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name("big");
    create_topic(&bs, &topic, 1, &[("max.message.bytes", "4194304")])
        .await
        .expect("create topic");
    let producer = future_producer(
        &bs,
        &[
            ("message.max.bytes", "4194304"),
            ("batch.size", "4194304"),
            ("linger.ms", "0"),
        ],
    )
    .expect("producer");
    let n = 5;
    let values: Vec<Vec<u8>> = (0..n).map(|i| pseudo_random_bytes(i, 1 << 20)).collect();
    let mut futs = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let key = format!("big-{i}");
        futs.push(
            enqueue(
                &producer,
                FutureRecord::to(&topic)
                    .key(key.as_bytes())
                    .payload(v.as_slice()),
            )
            .await
            .expect("enqueue"),
        );
    }
    await_deliveries(futs)
        .await
        .expect("1 MiB records acknowledged");

    let consumer = stream_consumer(
        &bs,
        &[
            ("fetch.max.bytes", "8388608"),
            ("max.partition.fetch.bytes", "4194304"),
            ("receive.message.max.bytes", "16777216"),
        ],
    )
    .expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, n as usize, CONSUME_TIMEOUT)
        .await
        .expect("consume");
    for (i, (m, v)) in msgs.iter().zip(&values).enumerate() {
        assert_eq!(m.offset(), i as i64);
        let got = m.payload().expect("payload present");
        assert_eq!(got.len(), v.len(), "size of record {i}");
        assert!(got == v.as_slice(), "content of record {i} differs");
    }
}

#[tokio::test]
async fn hundred_partition_topic_roundtrips_every_partition() {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name("p100");
    let partitions = 100;
    create_topic(&bs, &topic, partitions, &[])
        .await
        .expect("create topic");
    let producer = future_producer(&bs, &[("linger.ms", "20")]).expect("producer");
    let per_partition = 3;
    let mut futs = Vec::new();
    let mut sent = Vec::new();
    for p in 0..partitions {
        for j in 0..per_partition {
            sent.push((p, format!("p{p}-r{j}")));
        }
    }
    for (p, v) in &sent {
        futs.push(
            enqueue(
                &producer,
                FutureRecord::to(&topic).partition(*p).payload(v.as_bytes()),
            )
            .await
            .expect("enqueue"),
        );
    }
    let deliveries = await_deliveries(futs).await.expect("acknowledged");
    for (d, (p, _)) in deliveries.iter().zip(&sent) {
        assert_eq!(d.partition, *p);
        assert!((0..per_partition as i64).contains(&d.offset), "{d:?}");
    }

    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    let parts: Vec<(&str, i32, Offset)> = (0..partitions)
        .map(|p| (topic.as_str(), p, Offset::Beginning))
        .collect();
    assign(&consumer, &parts).expect("assign");
    let msgs = consume_n(
        &consumer,
        (partitions * per_partition) as usize,
        Duration::from_secs(20),
    )
    .await
    .expect("consume all partitions");
    let mut by_partition = vec![Vec::new(); partitions as usize];
    for m in &msgs {
        by_partition[m.partition() as usize].push((
            m.offset(),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        ));
    }
    for (p, got) in by_partition.iter().enumerate() {
        let want: Vec<(i64, String)> = (0..per_partition)
            .map(|j| (j as i64, format!("p{p}-r{j}")))
            .collect();
        assert_eq!(got, &want, "partition {p}");
    }
}

async fn roundtrip_with_acks(acks: &str) {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name(&format!("acks{acks}"));
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let producer = future_producer(&bs, &[("acks", acks)]).expect("producer");
    let n = 100;
    let mut futs = Vec::new();
    for i in 0..n {
        let v = format!("acks-{acks}-{i}");
        futs.push(
            enqueue(&producer, FutureRecord::to(&topic).payload(v.as_bytes()))
                .await
                .expect("enqueue"),
        );
    }
    let deliveries = await_deliveries(futs).await.expect("delivered");
    if acks != "0" {
        for (i, d) in deliveries.iter().enumerate() {
            assert_eq!(d.offset, i as i64, "acks={acks}: offset of record {i}");
        }
    }
    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, n, CONSUME_TIMEOUT)
        .await
        .expect("consume");
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert_eq!(m.payload(), Some(format!("acks-{acks}-{i}").as_bytes()));
    }
}

#[tokio::test]
async fn produce_with_acks_0_is_readable() {
    roundtrip_with_acks("0").await;
}

#[tokio::test]
async fn produce_with_acks_1_returns_sequential_offsets() {
    roundtrip_with_acks("1").await;
}

#[tokio::test]
async fn produce_with_acks_all_returns_sequential_offsets() {
    roundtrip_with_acks("all").await;
}

#[tokio::test]
async fn fetch_from_middle_of_batch_returns_requested_offset_first() {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name("midbatch");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let producer = future_producer(&bs, &[("linger.ms", "300")]).expect("producer");
    let mut futs = Vec::new();
    for i in 0..10 {
        let v = format!("mid-{i}");
        futs.push(
            enqueue(&producer, FutureRecord::to(&topic).payload(v.as_bytes()))
                .await
                .expect("enqueue"),
        );
    }
    let deliveries = await_deliveries(futs).await.expect("acknowledged");
    let offsets: Vec<i64> = deliveries.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());

    // The premise: all ten records sit in one stored batch.
    let segments = segment_files(&broker.partition_dir(&topic, 0)).expect("segments");
    let batches = read_batches(segments.first().expect("a segment")).expect("parse");
    assert_eq!(
        batches.len(),
        1,
        "expected the 10 records in one batch, found {batches:?}"
    );
    assert_eq!(batches[0].record_count, 10);

    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Offset(5))]).expect("assign");
    let msgs = consume_n(&consumer, 5, CONSUME_TIMEOUT)
        .await
        .expect("consume");
    assert_eq!(
        msgs[0].offset(),
        5,
        "first message must be the requested offset"
    );
    for (m, i) in msgs.iter().zip(5..) {
        assert_eq!(m.offset(), i);
        assert_eq!(m.payload(), Some(format!("mid-{i}").as_bytes()));
    }
    let extra = drain_extra(&consumer, Duration::from_millis(500)).await;
    assert!(
        extra.is_empty(),
        "unexpected extra messages: {}",
        extra.len()
    );
}

#[tokio::test]
async fn record_larger_than_topic_max_message_bytes_is_rejected() {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name("toolarge");
    create_topic(&bs, &topic, 1, &[("max.message.bytes", "1024")])
        .await
        .expect("create topic");
    let producer = future_producer(&bs, &[("linger.ms", "0")]).expect("producer");
    let big = pseudo_random_bytes(3, 4000);
    let fut = enqueue(&producer, FutureRecord::to(&topic).payload(big.as_slice()))
        .await
        .expect("enqueue");
    match fut.await.expect("delivery report") {
        Err((e, _)) => assert_eq!(
            e.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge),
            "{e}"
        ),
        Ok(d) => panic!("4000-byte record accepted by a topic with max.message.bytes=1024: {d:?}"),
    }
    // Nothing was stored: the next record gets offset 0.
    let fut = enqueue(
        &producer,
        FutureRecord::to(&topic).payload(b"small".as_slice()),
    )
    .await
    .expect("enqueue");
    let d = await_deliveries(vec![fut])
        .await
        .expect("small record accepted");
    assert_eq!(d[0].offset, 0);
}

#[tokio::test]
async fn long_poll_fetch_returns_new_record_before_max_wait() {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name("longpoll");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let consumer = stream_consumer(&bs, &[("fetch.wait.max.ms", "5000")]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Offset(0))]).expect("assign");
    // Let the consumer connect and park a Fetch on the empty partition.
    let early = drain_extra(&consumer, Duration::from_millis(1500)).await;
    assert!(early.is_empty());

    let producer = future_producer(&bs, &[("linger.ms", "0")]).expect("producer");
    let sent_at = std::time::Instant::now();
    let fut = enqueue(
        &producer,
        FutureRecord::to(&topic).payload(b"wake up".as_slice()),
    )
    .await
    .expect("enqueue");
    let msgs = consume_n(&consumer, 1, Duration::from_secs(10))
        .await
        .expect("consume");
    let waited = sent_at.elapsed();
    await_deliveries(vec![fut]).await.expect("acknowledged");
    assert_eq!(msgs[0].payload(), Some(b"wake up".as_slice()));
    assert!(
        waited < Duration::from_millis(1500),
        "record arrived after {waited:?}; a parked Fetch (max wait 5 s) must return as soon as data arrives"
    );
}

#[tokio::test]
async fn idempotent_producer_roundtrip_has_sequential_offsets_and_no_duplicates() {
    let broker = start();
    let bs = broker.bootstrap();
    let topic = unique_name("idempotent");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let producer = future_producer(&bs, &[("enable.idempotence", "true"), ("linger.ms", "2")])
        .expect("idempotent producer");
    let n = 2_000;
    let mut futs = Vec::new();
    for i in 0..n {
        let v = format!("idem-{i}");
        futs.push(
            enqueue(&producer, FutureRecord::to(&topic).payload(v.as_bytes()))
                .await
                .expect("enqueue"),
        );
    }
    let deliveries = await_deliveries(futs).await.expect("acknowledged");
    for (i, d) in deliveries.iter().enumerate() {
        assert_eq!(d.offset, i as i64);
    }
    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, n, CONSUME_TIMEOUT)
        .await
        .expect("consume");
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.payload(), Some(format!("idem-{i}").as_bytes()));
    }
    let extra = drain_extra(&consumer, Duration::from_millis(500)).await;
    assert!(extra.is_empty(), "{} duplicate/extra records", extra.len());
}
