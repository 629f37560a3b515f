//! Idempotent producers end to end through librdkafka: retried batches
//! (responses lost by a fault-injecting proxy, connections cut mid-request)
//! and a broker SIGKILL mid-stream must still land exactly the produced
//! sequence, each record at the offset its delivery report named.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_tests::proxy::{FaultConfig, start_broker_behind_proxy};
use sluice_tests::{
    Broker, base_config, consumer_config, create_topic, http_get, send_blocking, unique_name,
};

/// Delivery reports: sequence number → (partition, offset), plus failures.
#[derive(Default)]
struct Deliveries {
    acked: Mutex<BTreeMap<u64, (i32, i64)>>,
    acked_count: AtomicU64,
    failed: Mutex<Vec<(u64, String)>>,
}

struct DeliveryLog(Arc<Deliveries>);

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        match result {
            Ok(m) => {
                if let Ok(mut a) = self.0.acked.lock() {
                    a.insert(*seq, (m.partition(), m.offset()));
                }
                self.0.acked_count.fetch_add(1, Ordering::SeqCst);
            }
            Err((e, _)) => {
                if let Ok(mut f) = self.0.failed.lock() {
                    f.push((*seq, e.to_string()));
                }
            }
        }
    }
}

fn idempotent_producer(bootstrap: &str) -> (ThreadedProducer<DeliveryLog>, Arc<Deliveries>) {
    let log = Arc::new(Deliveries::default());
    let mut cfg = base_config(bootstrap);
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        // Small batches: many Produce requests for the proxy to disturb.
        .set("batch.num.messages", "100")
        .set("message.timeout.ms", "120000")
        .set("queue.buffering.max.messages", "200000");
    let producer = cfg
        .create_with_context(DeliveryLog(log.clone()))
        .expect("idempotent producer");
    (producer, log)
}

fn send_seq(producer: &ThreadedProducer<DeliveryLog>, topic: &str, partitions: i32, seq: u64) {
    let value = seq.to_string();
    let record = BaseRecord::with_opaque_to(topic, Box::new(seq))
        .partition((seq % partitions as u64) as i32)
        .key(&value)
        .payload(&value);
    if let Err(e) = send_blocking(producer, record) {
        panic!("cannot enqueue record {seq}: {e}");
    }
}

/// Every record of a partition as (offset, value), read from the beginning
/// up to the high watermark.
fn read_partition(bootstrap: &str, topic: &str, partition: i32) -> Vec<(i64, u64)> {
    let consumer: BaseConsumer = consumer_config(bootstrap).create().expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = low;
    while next < high {
        assert!(
            Instant::now() < deadline,
            "read only up to offset {next} of {high} in {topic}-{partition}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = std::str::from_utf8(m.payload().unwrap_or_default())
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("non-numeric value at offset {}", m.offset()));
                next = m.offset() + 1;
                out.push((m.offset(), value));
            }
            Some(Err(e)) => eprintln!("consumer error (continuing): {e}"),
            None => {}
        }
    }
    out
}

/// Checks that each partition holds exactly its share of `0..total` in
/// order, and that every delivery report names the offset its record
/// actually landed at.
fn assert_exact_sequence(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    total: u64,
    deliveries: &Deliveries,
) {
    let failed = deliveries
        .failed
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    assert!(
        failed.is_empty(),
        "{} deliveries failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    let acked = deliveries
        .acked
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default();
    assert_eq!(acked.len() as u64, total, "every record acknowledged");
    for p in 0..partitions {
        let log = read_partition(bootstrap, topic, p);
        let values: Vec<u64> = log.iter().map(|(_, v)| *v).collect();
        let expected: Vec<u64> = (0..total)
            .filter(|s| s % partitions as u64 == p as u64)
            .collect();
        if values != expected {
            let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
            for v in &values {
                *counts.entry(*v).or_default() += 1;
            }
            let dups: Vec<u64> = counts
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(v, _)| *v)
                .take(20)
                .collect();
            let missing: Vec<u64> = expected
                .iter()
                .filter(|v| !counts.contains_key(v))
                .copied()
                .take(20)
                .collect();
            let first_diff = values
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(values.len().min(expected.len()));
            panic!(
                "{topic}-{p}: log holds {} records, expected {}; duplicates (first 20): {dups:?}; \
                 missing (first 20): {missing:?}; first difference at index {first_diff}: \
                 log {:?} expected {:?}",
                values.len(),
                expected.len(),
                values.get(first_diff..first_diff + 5),
                expected.get(first_diff..first_diff + 5)
            );
        }
        for (offset, value) in &log {
            assert_eq!(
                acked.get(value),
                Some(&(p, *offset)),
                "record {value} sits at {topic}-{p}@{offset} but its delivery report says otherwise"
            );
        }
    }
}

/// Sum of all samples of a counter in the broker's /metrics output.
fn metric_total(broker: &Broker, name: &str) -> Option<f64> {
    let resp = http_get(broker.admin_addr(), "/metrics").expect("GET /metrics");
    let mut total = None;
    for line in resp.body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

fn produce_through_faulty_proxy(partitions: i32, total: u64, seed: u64) {
    let config = FaultConfig {
        seed,
        drop_produce_response: 0.05,
        cut_produce_request: 0.03,
        max_faults: 40,
    };
    let (broker, proxy) = start_broker_behind_proxy(config, &[]).expect("broker behind proxy");
    let bs = proxy.bootstrap();
    let topic = unique_name("idem");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(create_topic(&bs, &topic, partitions, &[]))
        .expect("create topic");

    let started = Instant::now();
    let (producer, deliveries) = idempotent_producer(&bs);
    for seq in 0..total {
        send_seq(&producer, &topic, partitions, seq);
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("all deliveries reported");
    let elapsed = started.elapsed();
    proxy.set_faults_enabled(false);

    let stats = proxy.stats();
    let duplicates = metric_total(&broker, "sluice_duplicate_batches_total");
    println!(
        "{total} records to {partitions} partition(s) in {elapsed:?}; proxy {stats:?}; \
         sluice_duplicate_batches_total = {duplicates:?}"
    );
    assert!(
        stats.faults() > 0,
        "the proxy injected no faults: {stats:?}"
    );
    assert_exact_sequence(&bs, &topic, partitions, total, &deliveries);
    if stats.responses_dropped > 0 {
        // A dropped response means the broker wrote the batch and the client
        // had to send it again: the retry must have been recognized.
        assert!(
            duplicates.unwrap_or(0.0) > 0.0,
            "{} Produce responses were dropped after the broker wrote the batch, \
             yet sluice_duplicate_batches_total = {duplicates:?}",
            stats.responses_dropped
        );
    }
}

#[test]
fn idempotent_producer_through_faulty_proxy_lands_exact_sequence() {
    produce_through_faulty_proxy(1, 20_000, 7);
}

#[test]
fn idempotent_producer_through_faulty_proxy_lands_exact_sequence_on_each_of_four_partitions() {
    produce_through_faulty_proxy(4, 20_000, 11);
}

/// The hardest restart case: a batch the broker wrote but whose response
/// never reached the producer (the proxy swallows it and then refuses
/// connections) is retried against the restarted broker, which must
/// recognize it from the producer state rebuilt out of the log.
#[test]
fn idempotent_state_survives_broker_restart() {
    const TOTAL: u64 = 30_000;
    const PARTITIONS: i32 = 2;
    let config = FaultConfig {
        seed: 3,
        drop_produce_response: 1.0,
        cut_produce_request: 0.0,
        max_faults: 1,
    };
    let (mut broker, proxy) = start_broker_behind_proxy(config, &[]).expect("broker behind proxy");
    proxy.set_faults_enabled(false);
    let bs = proxy.bootstrap();
    let topic = unique_name("idem-restart");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(create_topic(&bs, &topic, PARTITIONS, &[]))
        .expect("create topic");

    let (producer, deliveries) = idempotent_producer(&bs);
    let producer_thread = {
        let topic = topic.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            for seq in 0..TOTAL {
                send_seq(&producer, &topic, PARTITIONS, seq);
                if seq % 500 == 499 {
                    // Pace: 500 records per 50 ms, so the kill lands mid-stream.
                    let due = Duration::from_millis(50 * (seq / 500 + 1));
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            producer
                .flush(Duration::from_secs(120))
                .expect("all deliveries reported");
        })
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    while deliveries.acked_count.load(Ordering::SeqCst) < 8_000 {
        assert!(Instant::now() < deadline, "8000 acks before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    // No reconnects from now on; swallow the next Produce response (the
    // broker has written that batch), then SIGKILL the broker.
    proxy.set_paused(true);
    proxy.set_faults_enabled(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.stats().responses_dropped == 0 {
        assert!(
            Instant::now() < deadline,
            "no Produce response was swallowed: {:?}",
            proxy.stats()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let acked_at_kill = deliveries.acked_count.load(Ordering::SeqCst);
    broker.kill();
    std::thread::sleep(Duration::from_millis(300));
    broker.restart().expect("broker restarts after SIGKILL");
    proxy.set_target(broker.kafka_addr());
    proxy.set_paused(false);

    producer_thread.join().expect("producer thread");
    let duplicates = metric_total(&broker, "sluice_duplicate_batches_total");
    println!(
        "killed after {acked_at_kill} acks; proxy {:?}; restarted broker's \
         sluice_duplicate_batches_total = {duplicates:?}",
        proxy.stats(),
    );
    assert_exact_sequence(&bs, &topic, PARTITIONS, TOTAL, &deliveries);
    assert!(
        duplicates.unwrap_or(0.0) > 0.0,
        "the batch written before the SIGKILL (response swallowed) was retried after the \
         restart but the restarted broker reports no duplicate batch"
    );
}

/// A batch that arrives ahead of the producer's next sequence (an earlier
/// pipelined batch failed and is being retried) gets a retriable error,
/// not OUT_OF_ORDER_SEQUENCE_NUMBER: on that, librdkafka bumps its epoch
/// and resends the earlier batch under the new one, storing it twice if
/// it had been stored after all. Behind the window it is out of order.
#[test]
fn a_sequence_gap_is_retriable_and_fills_in_order() {
    use sluice_tests::raw_client::{Idempotent, produce_idempotent};
    let broker = Broker::start().expect("broker");
    let topic = unique_name("gap");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(create_topic(&broker.bootstrap(), &topic, 1, &[]))
        .expect("topic");
    let send = |first_sequence: i32| {
        let producer = Idempotent {
            producer_id: 4242,
            producer_epoch: 0,
            first_sequence,
            transactional: false,
        };
        let resp = produce_idempotent(&broker.bootstrap(), &topic, 0, producer, &[b"x".to_vec()])
            .expect("an answer");
        let p = resp.responses[0].partition_responses[0].clone();
        (
            p.error_code,
            p.base_offset,
            p.error_message.map(|m| m.to_string()),
        )
    };
    assert_eq!(send(0).0, 0);
    let (code, _, message) = send(2);
    assert_eq!(code, 7, "REQUEST_TIMED_OUT (retriable): {message:?}");
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("arrived before 1")),
        "{message:?}"
    );
    assert_eq!(send(1), (0, 1, None));
    assert_eq!(send(2), (0, 2, None));
    // A retry of a stored batch is answered with its first offset.
    assert_eq!(send(1), (0, 1, None));
    for seq in 3..10 {
        assert_eq!(send(seq).0, 0);
    }
    // Behind the five remembered batches: out of order (Kafka's answer).
    assert_eq!(send(1).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
}
