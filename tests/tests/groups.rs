//! Consumer groups end to end through librdkafka: partition sharing across
//! crashes, clean leaves and joins; committed offsets across a broker
//! SIGKILL; static membership; the cooperative-sticky assignor; and the
//! group admin APIs (ListGroups, DescribeGroups, DeleteGroups).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use sluice_tests::cluster::Target;
use sluice_tests::{
    Broker, OP_TIMEOUT, admin_client, admin_opts, base_config, create_topic, producer_config,
    send_blocking, unique_name,
};

/// Broker flags for group tests: a short initial rebalance delay.
const FAST_GROUPS: &[&str] = &["--group-initial-rebalance-delay-ms", "200"];

fn start_broker() -> Broker {
    Broker::start_with_args(FAST_GROUPS).expect("broker should start")
}

fn one() -> Target {
    Target::one(FAST_GROUPS).expect("broker should start")
}

fn three() -> Target {
    Target::three(FAST_GROUPS).expect("cluster should start")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for admin calls")
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Producing
// ---------------------------------------------------------------------------

#[derive(Default)]
struct DeliveryCounts {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

struct CountingContext(Arc<DeliveryCounts>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut first) = self.0.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

fn counting_producer(bootstrap: &str) -> (ThreadedProducer<CountingContext>, Arc<DeliveryCounts>) {
    let counts = Arc::new(DeliveryCounts::default());
    let mut cfg = producer_config(bootstrap);
    cfg.set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "200000");
    let producer = cfg
        .create_with_context(CountingContext(counts.clone()))
        .expect("producer");
    (producer, counts)
}

fn send(producer: &ThreadedProducer<CountingContext>, topic: &str, partition: i32, value: &str) {
    let record = BaseRecord::to(topic)
        .partition(partition)
        .key(value)
        .payload(value);
    if let Err(e) = send_blocking(producer, record) {
        panic!("cannot enqueue {value}: {e}");
    }
}

/// Produces `(partition, value)` records and waits until every one is
/// acknowledged.
fn produce_all(bootstrap: &str, topic: &str, records: &[(i32, String)]) {
    let (producer, counts) = counting_producer(bootstrap);
    for (p, v) in records {
        send(&producer, topic, *p, v);
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flush produced records");
    assert_eq!(
        counts.failed.load(Ordering::SeqCst),
        0,
        "deliveries failed: {:?}",
        counts.first_error.lock().map(|e| e.clone())
    );
    assert_eq!(counts.acked.load(Ordering::SeqCst), records.len() as u64);
}

// ---------------------------------------------------------------------------
// In-process group members
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct RebalanceEvent {
    assign: bool,
    partitions: Vec<i32>,
    owned_before: usize,
    owned_after: usize,
}

#[derive(Default)]
struct MemberState {
    assignment: Mutex<BTreeSet<i32>>,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Rebalance protocols librdkafka reported in callbacks (it reports
    /// "none" while closing, so only these two are recorded).
    saw_cooperative: AtomicBool,
    saw_eager: AtomicBool,
    /// (partition, offset, value) of every processed record.
    records: Mutex<Vec<(i32, i64, String)>>,
    /// Offsets (next to read) successfully committed.
    committed: Mutex<BTreeMap<i32, i64>>,
    commit_errors: AtomicU64,
}

impl MemberState {
    fn assignment(&self) -> BTreeSet<i32> {
        self.assignment
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
    fn events(&self) -> Vec<RebalanceEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
    fn record_count(&self) -> usize {
        self.records.lock().map(|r| r.len()).unwrap_or(0)
    }
    fn values(&self) -> Vec<String> {
        self.records
            .lock()
            .map(|r| r.iter().map(|(_, _, v)| v.clone()).collect())
            .unwrap_or_default()
    }
}

struct MemberContext(Arc<MemberState>);

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let protocol = consumer.rebalance_protocol();
        let cooperative = matches!(protocol, RebalanceProtocol::Cooperative);
        match protocol {
            RebalanceProtocol::Cooperative => self.0.saw_cooperative.store(true, Ordering::SeqCst),
            RebalanceProtocol::Eager => self.0.saw_eager.store(true, Ordering::SeqCst),
            RebalanceProtocol::None => {}
        }
        let Ok(mut owned) = self.0.assignment.lock() else {
            return;
        };
        let before = owned.len();
        let (assign, tpl) = match rebalance {
            Rebalance::Assign(tpl) => (true, tpl),
            Rebalance::Revoke(tpl) => (false, tpl),
            Rebalance::Error(e) => {
                eprintln!("rebalance error: {e}");
                return;
            }
        };
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match (assign, cooperative) {
            (true, true) => owned.extend(parts.iter().copied()),
            (true, false) => *owned = parts.iter().copied().collect(),
            (false, true) => parts.iter().for_each(|p| {
                owned.remove(p);
            }),
            (false, false) => owned.clear(),
        }
        let event = RebalanceEvent {
            assign,
            partitions: parts,
            owned_before: before,
            owned_after: owned.len(),
        };
        if let Ok(mut events) = self.0.events.lock() {
            events.push(event);
        }
    }
}

/// A group member polled by its own thread: processes records in chunks
/// and commits each chunk synchronously. `stop` closes it cleanly.
struct Member {
    name: String,
    state: Arc<MemberState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn member_config(bootstrap: &str, group: &str, overrides: &[(&str, &str)]) -> ClientConfig {
    let mut cfg = base_config(bootstrap);
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "20000");
    for (k, v) in overrides {
        cfg.set(*k, *v);
    }
    cfg
}

impl Member {
    fn start(name: &str, cfg: ClientConfig, topic: &str) -> Member {
        let state = Arc::new(MemberState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let consumer: BaseConsumer<MemberContext> = cfg
            .create_with_context(MemberContext(state.clone()))
            .expect("group consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let thread_state = state.clone();
        let thread_stop = stop.clone();
        let topic = topic.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("member-{name}"))
            .spawn(move || {
                while !thread_stop.load(Ordering::SeqCst) {
                    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
                    let mut chunk = Vec::new();
                    let mut timeout = Duration::from_millis(50);
                    while chunk.len() < 200 {
                        match consumer.poll(timeout) {
                            Some(Ok(m)) => {
                                let v = String::from_utf8_lossy(m.payload().unwrap_or_default())
                                    .into_owned();
                                next.insert(m.partition(), m.offset() + 1);
                                chunk.push((m.partition(), m.offset(), v));
                                timeout = Duration::ZERO;
                            }
                            Some(Err(e)) => {
                                eprintln!("consumer error: {e}");
                                break;
                            }
                            None => break,
                        }
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    if let Ok(mut r) = thread_state.records.lock() {
                        r.extend(chunk);
                    }
                    let mut tpl = TopicPartitionList::new();
                    for (p, o) in &next {
                        let _ = tpl.add_partition_offset(&topic, *p, Offset::Offset(*o));
                    }
                    match consumer.commit(&tpl, CommitMode::Sync) {
                        Ok(()) => {
                            if let Ok(mut c) = thread_state.committed.lock() {
                                c.extend(next);
                            }
                        }
                        Err(e) => {
                            eprintln!("commit failed: {e}");
                            thread_state.commit_errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                // Dropping the consumer closes it: revoke, LeaveGroup
                // (dynamic members only), destroy.
                drop(consumer);
            })
            .expect("spawn member thread");
        Member {
            name: name.to_string(),
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the consumer (leaving the group unless it is static) and
    /// waits for its thread.
    fn stop(mut self) -> Arc<MemberState> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // A consumer close that never returns must fail the test, not
            // hang it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !t.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "member {} did not close its consumer within 30 s",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            t.join()
                .unwrap_or_else(|_| panic!("member {} panicked", self.name));
        }
        self.state.clone()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // Bounded: while unwinding from a failed assertion a stuck
            // close must not turn the failure into a hang.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!(
                    "member {} did not close its consumer within 30 s",
                    self.name
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Child-process group members (see src/bin/sluice-test-consumer.rs)
// ---------------------------------------------------------------------------

#[derive(Default)]
struct ChildState {
    records: AtomicU64,
    assignment: Mutex<String>,
    log: Mutex<Vec<String>>,
}

struct ChildConsumer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    state: Arc<ChildState>,
    reader: Option<JoinHandle<()>>,
}

impl ChildConsumer {
    /// Spawns a consumer process; every `rec` line bumps `seen[value]`.
    fn spawn(
        name: &str,
        bootstrap: &str,
        group: &str,
        topic: &str,
        seen: Arc<Vec<AtomicU32>>,
    ) -> ChildConsumer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-test-consumer"))
            .args(["--bootstrap", bootstrap, "--group", group, "--topic", topic])
            .args(["--session-timeout-ms", "4000"])
            .args(["--heartbeat-interval-ms", "500"])
            .args(["--max-poll-interval-ms", "10000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice-test-consumer");
        let stdout = child.stdout.take().expect("child stdout is piped");
        let stdin = child.stdin.take();
        let state = Arc::new(ChildState::default());
        let reader_state = state.clone();
        let tag = name.to_string();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("rec ") {
                    let value = rest
                        .rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<usize>().ok());
                    match value.and_then(|v| seen.get(v)) {
                        Some(slot) => {
                            slot.fetch_add(1, Ordering::SeqCst);
                        }
                        None => panic!("{tag}: unexpected record line {line:?}"),
                    }
                    reader_state.records.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if let Some(parts) = line.strip_prefix("assigned ") {
                    if let Ok(mut a) = reader_state.assignment.lock() {
                        *a = parts.to_string();
                    }
                } else if line.starts_with("revoked")
                    && let Ok(mut a) = reader_state.assignment.lock()
                {
                    a.clear();
                }
                if line.starts_with("commit-ok") {
                    continue;
                }
                if let Ok(mut log) = reader_state.log.lock() {
                    log.push(line);
                }
            }
        });
        ChildConsumer {
            name: name.to_string(),
            child,
            stdin,
            state,
            reader: Some(reader),
        }
    }

    fn assignment(&self) -> String {
        self.state
            .assignment
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    fn records(&self) -> u64 {
        self.state.records.load(Ordering::SeqCst)
    }

    fn log(&self) -> Vec<String> {
        self.state.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// SIGKILL: no LeaveGroup, no final commit.
    fn crash(mut self) {
        self.child.kill().expect("SIGKILL consumer process");
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Clean close: the child commits nothing more, leaves the group, exits.
    fn stop(mut self, timeout: Duration) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait().expect("poll consumer process") {
                Some(status) => {
                    assert!(status.success(), "{} exited with {status}", self.name);
                    break;
                }
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    panic!("{} did not close within {timeout:?}", self.name);
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Some(r) = self.reader.take() {
            r.join().expect("reader thread");
        }
        assert!(
            self.log().iter().any(|l| l == "closed"),
            "{} exited without closing: {:?}",
            self.name,
            self.log()
        );
    }
}

impl Drop for ChildConsumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn three_consumers_share_twelve_partitions_through_kill_leave_and_join_without_loss() {
    share_twelve_partitions(one());
}

/// On three brokers the topic's partitions spread over all of them: the
/// group's coordinator holds a replica of only some of what it commits.
#[test]
fn three_consumers_share_twelve_partitions_on_a_cluster() {
    share_twelve_partitions(three());
}

fn share_twelve_partitions(target: Target) {
    const TOTAL: usize = 100_000;
    const PARTITIONS: i32 = 12;
    let started = Instant::now();
    let bs = target.bootstrap();
    let topic = unique_name("share12");
    let group = unique_name("share12-group");
    rt().block_on(create_topic(&bs, &topic, PARTITIONS, &[]))
        .expect("create topic");

    let seen: Arc<Vec<AtomicU32>> = Arc::new((0..TOTAL).map(|_| AtomicU32::new(0)).collect());
    let spawn = |name: &str| ChildConsumer::spawn(name, &bs, &group, &topic, seen.clone());
    let c1 = spawn("c1");
    let c2 = spawn("c2");
    let c3 = spawn("c3");
    wait_until(
        Duration::from_secs(20),
        "three consumers with a non-empty assignment",
        || [&c1, &c2, &c3].iter().all(|c| !c.assignment().is_empty()),
    );

    // Producer: ~100k records over ~12 s, value = global sequence number.
    let produced = Arc::new(AtomicU64::new(0));
    let (producer, counts) = counting_producer(&bs);
    let producer_thread = {
        let produced = produced.clone();
        let topic = topic.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            for seq in 0..TOTAL {
                send(
                    &producer,
                    &topic,
                    (seq % PARTITIONS as usize) as i32,
                    &seq.to_string(),
                );
                produced.store(seq as u64 + 1, Ordering::SeqCst);
                if seq % 1000 == 999 {
                    // Pace: 1000 records per 120 ms.
                    let due = Duration::from_millis(120 * (seq as u64 / 1000 + 1));
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            producer
                .flush(Duration::from_secs(60))
                .expect("flush producer");
        })
    };
    let produced_at_least = |n: u64| produced.load(Ordering::SeqCst) >= n;

    // Crash c1 while it owns partitions and has processed records.
    wait_until(Duration::from_secs(30), "20k produced", || {
        produced_at_least(20_000)
    });
    wait_until(Duration::from_secs(10), "c1 processing", || {
        c1.records() > 0 && !c1.assignment().is_empty()
    });
    let c1_assignment = c1.assignment();
    let c1_records = c1.records();
    c1.crash();
    let crashed_at = started.elapsed();

    // Clean leave of c2.
    wait_until(Duration::from_secs(30), "45k produced", || {
        produced_at_least(45_000)
    });
    let c2_records = c2.records();
    c2.stop(Duration::from_secs(20));
    let left_at = started.elapsed();

    // A new member joins.
    wait_until(Duration::from_secs(30), "60k produced", || {
        produced_at_least(60_000)
    });
    let c4 = spawn("c4");
    let joined_at = started.elapsed();

    producer_thread.join().expect("producer thread");
    assert_eq!(
        counts.failed.load(Ordering::SeqCst),
        0,
        "deliveries failed: {:?}",
        counts.first_error.lock().map(|e| e.clone())
    );
    let missing = || {
        seen.iter()
            .filter(|s| s.load(Ordering::SeqCst) == 0)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while missing() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let missing_now = missing();
    let first_missing: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.load(Ordering::SeqCst) == 0)
        .map(|(i, _)| i)
        .take(20)
        .collect();
    let c3_log = c3.log();
    let c4_log = c4.log();
    let c3_records = c3.records();
    let c4_records = c4.records();
    c3.stop(Duration::from_secs(20));
    c4.stop(Duration::from_secs(20));

    let processed: u64 = seen
        .iter()
        .map(|s| u64::from(s.load(Ordering::SeqCst)))
        .sum();
    let duplicates = processed - (TOTAL - missing_now) as u64;
    println!(
        "c1 crashed at {crashed_at:?} owning [{c1_assignment}] after {c1_records} records; \
         c2 left at {left_at:?} after {c2_records}; c4 joined at {joined_at:?}; \
         c3 processed {c3_records}, c4 {c4_records}; total processed {processed}, \
         duplicates {duplicates}, elapsed {:?}",
        started.elapsed()
    );
    println!("c3 events: {c3_log:?}");
    println!("c4 events: {c4_log:?}");
    assert_eq!(
        missing_now, 0,
        "{missing_now} of {TOTAL} produced records were never processed (first: {first_missing:?})"
    );
    assert!(
        c4_records > 0,
        "the member that joined late never processed a record"
    );
}

#[test]
fn committed_offsets_survive_broker_sigkill_and_restart() {
    offsets_survive_coordinator_sigkill(one());
}

#[test]
fn committed_offsets_survive_coordinator_sigkill_on_a_cluster() {
    offsets_survive_coordinator_sigkill(three());
}

fn offsets_survive_coordinator_sigkill(mut target: Target) {
    let bs = target.bootstrap();
    let topic = unique_name("commit-restart");
    let group = unique_name("commit-restart-group");
    rt().block_on(create_topic(&bs, &topic, 4, &[]))
        .expect("create topic");
    let records: Vec<(i32, String)> = (0..4)
        .flat_map(|p| (0..50).map(move |i| (p, format!("p{p}-{i}"))))
        .collect();
    produce_all(&bs, &topic, &records);

    let commits: BTreeMap<i32, i64> = [(0, 10), (1, 25), (2, 49), (3, 50)].into();
    {
        let consumer: BaseConsumer = member_config(&bs, &group, &[]).create().expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(20);
        while consumer.assignment().map(|a| a.count()).unwrap_or(0) < 4 {
            assert!(Instant::now() < deadline, "no assignment of 4 partitions");
            let _ = consumer.poll(Duration::from_millis(50));
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &commits {
            tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))
                .expect("commit list");
        }
        consumer
            .commit(&tpl, CommitMode::Sync)
            .expect("synchronous commit");
        let committed = consumer.committed(OP_TIMEOUT).expect("committed()");
        for (p, o) in &commits {
            let got = committed
                .find_partition(&topic, *p)
                .map(|e| e.offset())
                .expect("committed() lists the partition");
            assert_eq!(got, Offset::Offset(*o), "committed offset of partition {p}");
        }
    }

    target
        .kill_and_restart_coordinator(&group)
        .expect("the coordinator restarts after SIGKILL");
    let bs = target.bootstrap();
    // One more record for the fully committed partition: offset 50.
    produce_all(&bs, &topic, &[(3, "p3-50".to_string())]);

    let consumer: BaseConsumer = member_config(&bs, &group, &[])
        .create()
        .expect("consumer after restart");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut first: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "after restart, first records seen only for {first:?}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.entry(m.partition()).or_insert_with(|| {
                (
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )
            });
        }
    }
    for (p, o) in &commits {
        let (offset, value) = &first[p];
        assert_eq!(
            (*offset, value.as_str()),
            (*o, format!("p{p}-{o}").as_str()),
            "partition {p} must resume at its committed offset"
        );
    }
    let committed = consumer.committed(OP_TIMEOUT).expect("committed()");
    for (p, o) in &commits {
        let got = committed
            .find_partition(&topic, *p)
            .map(|e| e.offset())
            .expect("committed() lists the partition");
        assert_eq!(
            got,
            Offset::Offset(*o),
            "committed offset of partition {p} after restart"
        );
    }
}

#[test]
// Flaky teardown: about one run in six, dropping a static member's
// rust-rdkafka BaseConsumer never returns (the broker sees no request from
// it). Static membership stays covered in CI by the Python suite
// (test_static_member_restart_keeps_assignment_without_rebalance) and the
// coordinator's unit tests; run this with --ignored while investigating.
#[ignore = "BaseConsumer drop of a static member hangs intermittently; see comment"]
fn static_member_restart_within_session_timeout_causes_no_rebalance() {
    let broker = start_broker();
    let bs = broker.bootstrap();
    let topic = unique_name("static");
    let group = unique_name("static-group");
    rt().block_on(create_topic(&bs, &topic, 6, &[]))
        .expect("create topic");
    let cfg = |instance: &str| {
        member_config(
            &bs,
            &group,
            &[
                ("group.instance.id", instance),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "500"),
            ],
        )
    };

    let survivor = Member::start("survivor", cfg("static-a"), &topic);
    wait_until(Duration::from_secs(20), "survivor assigned", || {
        !survivor.state.assignment().is_empty()
    });
    let restarted = Member::start("restarted", cfg("static-b"), &topic);
    wait_until(
        Duration::from_secs(30),
        "both static members share the 6 partitions",
        || {
            let (a, b) = (survivor.state.assignment(), restarted.state.assignment());
            !a.is_empty() && !b.is_empty() && a.len() + b.len() == 6 && a.is_disjoint(&b)
        },
    );
    // Let the group settle (no rebalance in flight).
    std::thread::sleep(Duration::from_secs(2));
    let survivor_events = survivor.state.events();
    let survivor_assignment = survivor.state.assignment();
    let old_assignment = restarted.state.assignment();

    let closed_at = Instant::now();
    restarted.stop();
    std::thread::sleep(Duration::from_secs(1));
    let again = Member::start("restarted-again", cfg("static-b"), &topic);
    wait_until(
        Duration::from_secs(9),
        "restarted static member gets an assignment",
        || !again.state.assignment().is_empty(),
    );
    let rejoined_after = closed_at.elapsed();
    // Several heartbeat intervals for a rebalance to show up.
    std::thread::sleep(Duration::from_secs(4));

    let new_events = survivor.state.events()[survivor_events.len()..].to_vec();
    println!(
        "rejoined after {rejoined_after:?}; survivor {survivor_assignment:?}, restarted {old_assignment:?} -> {:?}",
        again.state.assignment()
    );
    assert!(
        new_events.is_empty(),
        "the surviving static member saw rebalance callbacks: {new_events:?}"
    );
    assert_eq!(survivor.state.assignment(), survivor_assignment);
    assert_eq!(
        again.state.assignment(),
        old_assignment,
        "the restarted static member must get its partitions back"
    );
    let again_events = again.state.events();
    assert_eq!(
        again_events.len(),
        1,
        "one assign for the restarted member: {again_events:?}"
    );
}

#[test]
fn cooperative_sticky_group_consumes_everything_while_a_third_member_joins_and_leaves() {
    cooperative_sticky_join_and_leave(one());
}

#[test]
fn cooperative_sticky_group_on_a_cluster() {
    cooperative_sticky_join_and_leave(three());
}

fn cooperative_sticky_join_and_leave(target: Target) {
    const PER_PHASE: usize = 600;
    let bs = target.bootstrap();
    let topic = unique_name("coop");
    let group = unique_name("coop-group");
    rt().block_on(create_topic(&bs, &topic, 6, &[]))
        .expect("create topic");
    let cfg = || {
        member_config(
            &bs,
            &group,
            &[("partition.assignment.strategy", "cooperative-sticky")],
        )
    };
    let phase = |n: usize| -> Vec<(i32, String)> {
        (n * PER_PHASE..(n + 1) * PER_PHASE)
            .map(|i| ((i % 6) as i32, i.to_string()))
            .collect()
    };

    let a = Member::start("a", cfg(), &topic);
    let b = Member::start("b", cfg(), &topic);
    let shares_all = |members: &[&Member]| {
        let sets: Vec<BTreeSet<i32>> = members.iter().map(|m| m.state.assignment()).collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        sets.iter().all(|s| !s.is_empty()) && total == 6 && union.len() == 6
    };
    wait_until(
        Duration::from_secs(30),
        "a and b share 6 partitions",
        || shares_all(&[&a, &b]),
    );
    produce_all(&bs, &topic, &phase(0));

    let c = Member::start("c", cfg(), &topic);
    wait_until(
        Duration::from_secs(30),
        "a, b and c share 6 partitions",
        || shares_all(&[&a, &b, &c]),
    );
    produce_all(&bs, &topic, &phase(1));
    let c_state = c.stop();
    wait_until(
        Duration::from_secs(30),
        "a and b share 6 partitions again",
        || shares_all(&[&a, &b]),
    );
    produce_all(&bs, &topic, &phase(2));

    let expected: BTreeSet<String> = (0..3 * PER_PHASE).map(|i| i.to_string()).collect();
    let union = || -> BTreeSet<String> {
        [&a.state, &b.state, &c_state]
            .iter()
            .flat_map(|s| s.values())
            .collect()
    };
    wait_until(Duration::from_secs(30), "every record consumed", || {
        union() == expected
    });
    let total = a.state.record_count() + b.state.record_count() + c_state.record_count();
    println!(
        "consumed {total} records for {} distinct (duplicates {}); a {:?} b {:?} c {:?}",
        expected.len(),
        total - expected.len(),
        a.state.events(),
        b.state.events(),
        c_state.events()
    );
    for (name, state) in [("a", &a.state), ("b", &b.state), ("c", &c_state)] {
        assert_eq!(
            (
                state.saw_cooperative.load(Ordering::SeqCst),
                state.saw_eager.load(Ordering::SeqCst)
            ),
            (true, false),
            "member {name} must run the cooperative protocol"
        );
    }
    // Incremental rebalancing: while they stay in the group, a and b only
    // ever give up some of their partitions, never all of them.
    for (name, state) in [("a", &a.state), ("b", &b.state)] {
        for e in state.events() {
            assert!(
                e.assign || (e.partitions.len() < e.owned_before && e.owned_after > 0),
                "member {name} had all its partitions revoked: {e:?}"
            );
        }
    }
    assert!(
        c_state.record_count() > 0,
        "the third member consumed nothing"
    );
}

#[test]
fn group_admin_lists_describes_and_deletes_only_empty_groups() {
    group_admin(one());
}

#[test]
fn group_admin_on_a_cluster() {
    group_admin(three());
}

fn group_admin(target: Target) {
    let bs = target.bootstrap();
    let topic = unique_name("gadmin");
    let group = unique_name("gadmin-group");
    rt().block_on(create_topic(&bs, &topic, 3, &[]))
        .expect("create topic");
    let records: Vec<(i32, String)> = (0..30).map(|i| (i % 3, i.to_string())).collect();
    produce_all(&bs, &topic, &records);

    let member = Member::start("m", member_config(&bs, &group, &[]), &topic);
    wait_until(
        Duration::from_secs(30),
        "member consumed and committed all records",
        || {
            let c = member
                .state
                .committed
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default();
            c == BTreeMap::from([(0, 10), (1, 10), (2, 10)])
        },
    );

    // A second consumer of the group that never subscribes: for committed
    // offsets and group listings.
    let query: BaseConsumer = member_config(&bs, &group, &[]).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&topic, p);
    }
    let committed = query
        .committed_offsets(tpl.clone(), OP_TIMEOUT)
        .expect("OffsetFetch");
    for p in 0..3 {
        assert_eq!(
            committed.find_partition(&topic, p).map(|e| e.offset()),
            Some(Offset::Offset(10)),
            "committed offset of partition {p}"
        );
    }

    let described = query
        .fetch_group_list(Some(&group), OP_TIMEOUT)
        .expect("DescribeGroups");
    let info = described
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .expect("the group is described");
    assert_eq!(info.state(), "Stable");
    assert_eq!(info.protocol_type(), "consumer");
    assert_eq!(info.members().len(), 1, "one member");
    let all = query
        .fetch_group_list(None, OP_TIMEOUT)
        .expect("ListGroups");
    assert!(
        all.groups().iter().any(|g| g.name() == group),
        "ListGroups includes {group}"
    );

    let admin = admin_client(&bs).expect("admin");
    let rt = rt();
    let refused = rt
        .block_on(admin.delete_groups(&[&group], &admin_opts()))
        .expect("DeleteGroups request");
    assert_eq!(
        refused,
        vec![Err((group.clone(), RDKafkaErrorCode::NonEmptyGroup))],
        "deleting a group with an active member"
    );

    member.stop();
    wait_until(Duration::from_secs(10), "group empty after leave", || {
        query
            .fetch_group_list(Some(&group), OP_TIMEOUT)
            .ok()
            .and_then(|l| {
                l.groups()
                    .iter()
                    .find(|g| g.name() == group)
                    .map(|g| g.state() == "Empty" && g.members().is_empty())
            })
            .unwrap_or(false)
    });
    let deleted = rt
        .block_on(admin.delete_groups(&[&group], &admin_opts()))
        .expect("DeleteGroups request");
    assert_eq!(deleted, vec![Ok(group.clone())], "deleting the empty group");

    let committed = query
        .committed_offsets(tpl, OP_TIMEOUT)
        .expect("OffsetFetch after delete");
    for p in 0..3 {
        assert_eq!(
            committed.find_partition(&topic, p).map(|e| e.offset()),
            Some(Offset::Invalid),
            "partition {p} has no committed offset once the group is deleted"
        );
    }
    let all = query
        .fetch_group_list(None, OP_TIMEOUT)
        .expect("ListGroups");
    assert!(
        !all.groups().iter().any(|g| g.name() == group),
        "ListGroups no longer includes {group}"
    );
}
