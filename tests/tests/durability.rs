//! Durability: SIGKILL mid-stream with acks=all, and recovery from corrupt
//! or torn segment tails.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::Offset;
use sluice_tests::{
    Broker, OP_TIMEOUT, assign, await_deliveries, consume_n, create_topic, enqueue,
    future_producer, producer_config, pseudo_random_bytes, read_batches, segment_files,
    send_blocking, stream_consumer, unique_name,
};

/// Delivery-report bookkeeping shared with the producer's callback thread.
#[derive(Default)]
struct AckLog {
    /// (sequence number, acknowledged offset)
    acked: Mutex<Vec<(usize, i64)>>,
    acked_count: AtomicUsize,
    failed_count: AtomicUsize,
}

struct AckContext(Arc<AckLog>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<usize>) {
        match result {
            Ok(msg) => {
                if let Ok(mut acked) = self.0.acked.lock() {
                    acked.push((*seq, msg.offset()));
                }
                self.0.acked_count.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                self.0.failed_count.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn crash_key(seq: usize) -> Vec<u8> {
    format!("{seq:08}").into_bytes()
}

fn crash_value(seq: usize) -> Vec<u8> {
    let mut v = format!("crash-record-{seq:08}-").into_bytes();
    v.extend_from_slice(&pseudo_random_bytes(seq as u64, 40));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_keeps_every_acknowledged_record() {
    const TOTAL: usize = 20_000;
    const CHUNK: usize = 1_000;
    const KILL_AFTER_ACKS: usize = 5_000;

    let mut broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("crash");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");

    let log = Arc::new(AckLog::default());
    let mut cfg = producer_config(&bs);
    cfg.set("acks", "all")
        .set("linger.ms", "0")
        // Small batches: a burst becomes many pipelined produce requests.
        .set("batch.num.messages", "50")
        .set("message.timeout.ms", "3000")
        .set("request.timeout.ms", "2000");
    let producer: ThreadedProducer<AckContext> = cfg
        .create_with_context(AckContext(log.clone()))
        .expect("threaded producer");
    let producer = Arc::new(producer);

    // Producer task: paced so the kill lands mid-stream. It keeps sending
    // after the kill, like a client that does not know the broker died.
    let sent = Arc::new(AtomicUsize::new(0));
    let producer_thread = {
        let producer = producer.clone();
        let sent = sent.clone();
        let topic = topic.clone();
        std::thread::spawn(move || {
            for seq in 0..TOTAL {
                let key = crash_key(seq);
                let value = crash_value(seq);
                let record = BaseRecord::with_opaque_to(&topic, Box::new(seq))
                    .partition(0)
                    .key(&key)
                    .payload(&value);
                if let Err(e) = send_blocking(&producer, record) {
                    panic!("cannot enqueue record {seq}: {e}");
                }
                sent.fetch_add(1, Ordering::SeqCst);
                if seq % CHUNK == CHUNK - 1 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };

    // Killer: SIGKILL once enough acknowledgements arrived.
    let deadline = Instant::now() + Duration::from_secs(20);
    // Kill only while records are in flight (sent but not yet acknowledged),
    // so some acknowledgements are racing with the kill.
    let in_flight_at_kill = loop {
        let acked = log.acked_count.load(Ordering::SeqCst);
        let in_flight = sent.load(Ordering::SeqCst).saturating_sub(acked);
        // Prefer a moment when a burst is partly acknowledged (produce
        // requests of that burst are pipelined); fall back to any moment
        // with records in flight.
        let partial = acked % CHUNK != 0;
        if acked >= KILL_AFTER_ACKS
            && in_flight > 0
            && (partial || acked >= KILL_AFTER_ACKS + 3 * CHUNK)
        {
            break in_flight;
        }
        assert!(
            Instant::now() < deadline,
            "no kill point after 20 s: {acked} acked, {in_flight} in flight"
        );
        tokio::task::yield_now().await;
    };
    broker.kill();
    let acked_at_kill = log.acked_count.load(Ordering::SeqCst);
    producer_thread.join().expect("producer thread panicked");
    // Let every outstanding record resolve (they fail after message.timeout.ms)
    // before the broker comes back, so no stale retry can reach it.
    let flush = tokio::task::spawn_blocking({
        let producer = producer.clone();
        move || producer.flush(Duration::from_secs(15))
    })
    .await
    .expect("flush task");
    drop(producer);
    let sent = sent.load(Ordering::SeqCst);
    let acked: Vec<(usize, i64)> = log.acked.lock().expect("ack log").clone();
    let failed = log.failed_count.load(Ordering::SeqCst);
    eprintln!(
        "crash test: sent {sent}, acked {} ({acked_at_kill} right after the kill, \
         {in_flight_at_kill} in flight just before it), failed {failed}, flush {flush:?}",
        acked.len()
    );
    assert!(
        acked.len() < sent,
        "the kill did not land mid-stream (all {sent} sent records acknowledged)"
    );

    broker
        .restart()
        .expect("broker restarts on the same data dir");
    let bs = broker.bootstrap();
    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(&topic, 0, OP_TIMEOUT)
        .expect("watermarks after restart");
    assert_eq!(low, 0);
    let max_acked = acked.iter().map(|&(_, o)| o).max().unwrap_or(-1);
    assert!(
        high > max_acked,
        "high watermark {high} after restart but offset {max_acked} was acknowledged"
    );
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, high as usize, Duration::from_secs(20))
        .await
        .expect("read back everything up to the high watermark");

    let acked_at: HashMap<i64, usize> = acked.iter().map(|&(s, o)| (o, s)).collect();
    let mut last_seq: Option<usize> = None;
    let mut extras = 0usize;
    for (i, m) in msgs.iter().enumerate() {
        let offset = m.offset();
        assert_eq!(offset, i as i64, "offsets must be contiguous from 0");
        let key = m.key().expect("key present");
        let seq: usize = std::str::from_utf8(key)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("offset {offset}: unparsable key {key:?}"));
        assert_eq!(
            m.payload(),
            Some(crash_value(seq).as_slice()),
            "offset {offset}: value bytes of record {seq} differ"
        );
        if let Some(prev) = last_seq {
            assert!(
                seq > prev,
                "offset {offset}: record {seq} after {prev} (order)"
            );
        }
        last_seq = Some(seq);
        match acked_at.get(&offset) {
            Some(&want) => assert_eq!(
                seq, want,
                "offset {offset}: acknowledged record {want} but found record {seq}"
            ),
            None => {
                assert!(
                    offset > max_acked,
                    "offset {offset} holds unacknowledged record {seq} inside the acknowledged prefix (max acked offset {max_acked})"
                );
                extras += 1;
            }
        }
    }
    eprintln!(
        "crash test: {} records after restart: {} acknowledged, {extras} unacknowledged extras",
        msgs.len(),
        acked.len()
    );
    assert_eq!(msgs.len() - extras, acked.len());

    // The log continues where it left off.
    let producer = future_producer(&bs, &[]).expect("producer after restart");
    let fut = enqueue(
        &producer,
        rdkafka::producer::FutureRecord::to(&topic).payload(b"after restart".as_slice()),
    )
    .await
    .expect("enqueue");
    let d = await_deliveries(vec![fut]).await.expect("acknowledged");
    assert_eq!(d[0].offset, high, "first offset after restart");
}

/// Produces `n` records, each in its own batch (each send awaited).
async fn produce_one_per_batch(bs: &str, topic: &str, n: usize) -> Vec<Vec<u8>> {
    let producer = future_producer(bs, &[("linger.ms", "0")]).expect("producer");
    let mut values = Vec::new();
    for i in 0..n {
        let mut v = format!("rec-{i}-").into_bytes();
        v.extend_from_slice(&pseudo_random_bytes(i as u64 + 1000, 200));
        let fut = enqueue(
            &producer,
            rdkafka::producer::FutureRecord::to(topic).payload(v.as_slice()),
        )
        .await
        .expect("enqueue");
        let d = await_deliveries(vec![fut]).await.expect("acknowledged");
        assert_eq!(d[0].offset, i as i64);
        values.push(v);
    }
    values
}

/// Log lines of the latest broker generation containing `needle`.
fn log_lines_since_last_start(broker: &Broker, needle: &str) -> Vec<String> {
    let log = broker.stderr_log();
    let last = log
        .rfind("===== sluice-tests harness: broker start")
        .unwrap_or(0);
    log[last..]
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains(needle))
        .map(str::to_string)
        .collect()
}

async fn expect_records(bs: &str, topic: &str, values: &[Vec<u8>]) {
    let consumer = stream_consumer(bs, &[]).expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, OP_TIMEOUT)
        .expect("watermarks");
    assert_eq!(
        (low, high),
        (0, values.len() as i64),
        "watermarks after recovery"
    );
    assign(&consumer, &[(topic, 0, Offset::Beginning)]).expect("assign");
    let msgs = consume_n(&consumer, values.len(), Duration::from_secs(15))
        .await
        .expect("consume surviving records");
    for (i, (m, v)) in msgs.iter().zip(values).enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert!(
            m.payload() == Some(v.as_slice()),
            "offset {i}: value differs after recovery"
        );
    }
}

#[tokio::test]
async fn corrupt_last_batch_is_truncated_on_restart_and_earlier_records_survive() {
    let mut broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("corrupt");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let n = 20;
    let values = produce_one_per_batch(&bs, &topic, n).await;
    broker.kill();

    let segments = segment_files(&broker.partition_dir(&topic, 0)).expect("segments");
    let last = segments.last().expect("a segment file");
    let batches = read_batches(last).expect("parse segment");
    let victim = *batches.last().expect("a batch in the last segment");
    assert_eq!(
        victim.base_offset,
        n as i64 - 1,
        "last batch holds the last record: {batches:?}"
    );
    let end = victim.position + victim.size;
    {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(last)
            .expect("open segment for corruption");
        let len = f.metadata().expect("segment metadata").len();
        assert!(len >= end, "segment shorter than its batches");
        // Flip the last 3 bytes of the last batch (record payload).
        let mut buf = [0u8; 3];
        f.seek(SeekFrom::Start(end - 3)).expect("seek");
        f.read_exact(&mut buf).expect("read tail");
        for b in &mut buf {
            *b ^= 0xFF;
        }
        f.seek(SeekFrom::Start(end - 3)).expect("seek");
        f.write_all(&buf).expect("write corrupted tail");
        f.sync_all().expect("sync corrupted segment");
    }

    broker
        .restart()
        .expect("broker must start despite a corrupt tail");
    let bs = broker.bootstrap();
    expect_records(&bs, &topic, &values[..n - 1]).await;

    let lines = log_lines_since_last_start(&broker, "truncat");
    assert!(
        !lines.is_empty(),
        "no stderr line mentioning truncation after restart"
    );
    assert!(
        lines.iter().any(|l| l.contains(&topic)),
        "truncation line does not name the topic-partition {topic}-0: {lines:?}"
    );
    let pos = victim.position.to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&pos) || l.contains(&(n - 1).to_string())),
        "truncation line names neither byte position {pos} nor offset {}: {lines:?}",
        n - 1
    );

    // New records continue at the truncation point.
    let producer = future_producer(&bs, &[]).expect("producer");
    let fut = enqueue(
        &producer,
        rdkafka::producer::FutureRecord::to(&topic).payload(b"after recovery".as_slice()),
    )
    .await
    .expect("enqueue");
    let d = await_deliveries(vec![fut]).await.expect("acknowledged");
    assert_eq!(d[0].offset, n as i64 - 1, "offset after truncation");
}

#[tokio::test]
async fn torn_partial_batch_at_segment_end_is_truncated_on_restart() {
    let mut broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("torn");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    let n = 10;
    let values = produce_one_per_batch(&bs, &topic, n).await;
    broker.kill();

    let segments = segment_files(&broker.partition_dir(&topic, 0)).expect("segments");
    let last = segments.last().expect("a segment file");
    let batches = read_batches(last).expect("parse segment");
    let end = batches.last().map(|b| b.position + b.size).unwrap_or(0);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .open(last)
            .expect("open segment for appending");
        f.set_len(end).expect("drop any preallocated tail");
        f.seek(SeekFrom::Start(end)).expect("seek to end");
        // A batch header claiming 1000 bytes, followed by only 20 bytes: a
        // write torn by the crash.
        let mut torn = Vec::new();
        torn.extend_from_slice(&(n as i64).to_be_bytes());
        torn.extend_from_slice(&1000i32.to_be_bytes());
        torn.extend_from_slice(&pseudo_random_bytes(99, 20));
        f.write_all(&torn).expect("append torn batch");
        f.sync_all().expect("sync");
    }

    broker
        .restart()
        .expect("broker must start despite a torn tail");
    let bs = broker.bootstrap();
    expect_records(&bs, &topic, &values).await;
    let lines = log_lines_since_last_start(&broker, "truncat");
    assert!(
        lines.iter().any(|l| l.contains(&topic)),
        "no truncation line naming {topic}: {lines:?}"
    );
}

/// Flips one byte of `segment` at `position`.
fn flip_byte(segment: &std::path::Path, position: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .expect("open segment for corruption");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(position)).expect("seek");
    f.read_exact(&mut b).expect("read byte");
    b[0] ^= 0x5A;
    f.seek(SeekFrom::Start(position)).expect("seek");
    f.write_all(&b).expect("write flipped byte");
    f.sync_all().expect("sync");
}

/// Reads from the start until the consumer reports an error; returns the
/// offsets delivered before it and the error.
async fn consume_until_error(bs: &str, topic: &str) -> (Vec<i64>, String) {
    let consumer = stream_consumer(bs, &[]).expect("consumer");
    assign(&consumer, &[(topic, 0, Offset::Beginning)]).expect("assign");
    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => offsets.push(m.offset()),
            Ok(Err(e)) => return (offsets, e.to_string()),
            Err(_) => panic!(
                "no consumer error within 20 s; delivered offsets {offsets:?} (a silent stall)"
            ),
        }
    }
}

/// A byte flipped in a sealed segment, in a batch header outside the CRC
/// (the base offset) and inside a record (caught by the CRC): sealed
/// segments are not re-read at startup, so the damage is found when a
/// fetch reaches it. The batches before it are served, then the consumer
/// gets an error at that offset instead of empty answers below the high
/// watermark; the broker logs the partition, segment and position and
/// counts it once.
#[tokio::test]
async fn corruption_in_a_sealed_segment_is_reported_and_never_a_silent_stall() {
    let mut broker = Broker::start().expect("broker should start");
    let topic = unique_name("sealedrot");
    create_topic(&broker.bootstrap(), &topic, 1, &[("segment.bytes", "1024")])
        .await
        .expect("create topic");
    produce_one_per_batch(&broker.bootstrap(), &topic, 20).await;
    broker.kill();
    let segments = segment_files(&broker.partition_dir(&topic, 0)).expect("segments");
    assert!(segments.len() >= 4, "several sealed segments: {segments:?}");
    // Second batch of the first segment: low byte of its base offset.
    let first = read_batches(&segments[0]).expect("parse segment");
    let header_victim = first[1];
    flip_byte(&segments[0], header_victim.position + 7);
    // A record byte in the first batch of the third segment.
    let third = read_batches(&segments[2]).expect("parse segment");
    let record_victim = third[0];
    flip_byte(
        &segments[2],
        record_victim.position + record_victim.size - 20,
    );
    broker.restart().expect("broker starts");
    let bs = broker.bootstrap();

    let (delivered, error) = consume_until_error(&bs, &topic).await;
    assert_eq!(
        delivered,
        vec![0],
        "the batch before the damaged header is served, nothing after it"
    );
    // CORRUPT_MESSAGE (error code 2), which librdkafka calls
    // "Broker: Invalid message".
    assert!(
        error.contains("InvalidMessage") || error.to_lowercase().contains("corrupt"),
        "the consumer is told why: {error}"
    );
    // Reading past the first damage reaches the second.
    let consumer = stream_consumer(&bs, &[]).expect("consumer");
    let past = record_victim.base_offset - 1;
    assign(&consumer, &[(&topic, 0, Offset::Offset(past))]).expect("assign");
    let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .expect("a record before the damaged one")
        .expect("record");
    assert_eq!(m.offset(), past);
    let e = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .expect("an error, not a stall");
    assert!(e.is_err(), "the damaged record batch is not delivered");

    let reported = log_lines_since_last_start(&broker, "corrupt batch");
    assert!(
        reported.iter().any(|l| l.contains(&format!("{topic}-0"))
            && l.contains(&format!("position {}", header_victim.position))),
        "the header damage is logged with partition and position: {reported:?}"
    );
    assert!(
        reported.iter().any(|l| l.contains("CRC mismatch")),
        "the record damage is logged as a CRC mismatch: {reported:?}"
    );
    let metrics = sluice_tests::http_get(broker.admin_addr(), "/metrics").expect("metrics");
    assert!(
        metrics
            .body
            .contains("sluice_storage_corrupt_batches_total 2"),
        "each damaged batch is counted once, however often it is read"
    );
}
