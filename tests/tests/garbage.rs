//! Hostile bytes on the Kafka port must not take the broker down: after each
//! kind of garbage the broker still serves a normal librdkafka round trip.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use sluice_tests::{Broker, create_topic, pseudo_random_bytes, roundtrip_once, unique_name};

/// What the broker did with the connection after the garbage was sent.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The broker closed (EOF or reset) the connection.
    Closed,
    /// The broker replied with some bytes.
    Replied(usize),
    /// Nothing happened within the wait.
    Open,
}

fn send_garbage(broker: &Broker, bytes: &[u8], half_close: bool, wait: Duration) -> Outcome {
    let mut s = TcpStream::connect_timeout(&broker.kafka_addr(), Duration::from_secs(5))
        .expect("connect to the Kafka port");
    // The broker may close early and reset the connection; that is fine.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set read timeout");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    let mut replied = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                return if replied > 0 {
                    Outcome::Replied(replied)
                } else {
                    Outcome::Closed
                };
            }
            Ok(n) => replied += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Outcome::Closed,
        }
        if Instant::now() > deadline {
            return if replied > 0 {
                Outcome::Replied(replied)
            } else {
                Outcome::Open
            };
        }
    }
}

async fn assert_still_serving(broker: &mut Broker, topic: &str, case: &str) {
    assert!(
        broker.is_running(),
        "broker exited after {case}: {:?}",
        broker.exit_status()
    );
    roundtrip_once(
        &broker.bootstrap(),
        topic,
        format!("after {case}").as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("broker no longer serves after {case}: {e:#}"));
}

async fn setup() -> (Broker, String) {
    let broker = Broker::start().expect("broker should start");
    let topic = unique_name("garbage");
    create_topic(&broker.bootstrap(), &topic, 1, &[])
        .await
        .expect("create topic");
    roundtrip_once(&broker.bootstrap(), &topic, b"before garbage")
        .await
        .expect("baseline round trip");
    (broker, topic)
}

#[tokio::test]
async fn random_bytes_do_not_break_the_broker() {
    let (mut broker, topic) = setup().await;
    for seed in 0..5 {
        let mut bytes = pseudo_random_bytes(seed, 4096);
        // Make the length prefix plausible so the body gets parsed too.
        bytes[..4].copy_from_slice(&4092i32.to_be_bytes());
        let outcome = send_garbage(&broker, &bytes, true, Duration::from_secs(2));
        eprintln!("random bytes #{seed} (length-prefixed): {outcome:?}");
        let raw = pseudo_random_bytes(seed + 100, 4096);
        let outcome = send_garbage(&broker, &raw, true, Duration::from_secs(2));
        eprintln!("random bytes #{seed} (raw): {outcome:?}");
    }
    assert_still_serving(&mut broker, &topic, "random bytes").await;
}

#[tokio::test]
async fn negative_length_prefix_closes_connection_and_broker_survives() {
    let (mut broker, topic) = setup().await;
    let mut bytes = (-2i32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 64]);
    let outcome = send_garbage(&broker, &bytes, false, Duration::from_secs(5));
    assert_eq!(
        outcome,
        Outcome::Closed,
        "a negative request size must close the connection"
    );
    assert_still_serving(&mut broker, &topic, "negative length prefix").await;
}

#[tokio::test]
async fn huge_length_prefix_closes_connection_and_broker_survives() {
    let (mut broker, topic) = setup().await;
    let mut bytes = 0x7fff_ffffi32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&pseudo_random_bytes(5, 100));
    let outcome = send_garbage(&broker, &bytes, false, Duration::from_secs(5));
    assert_eq!(
        outcome,
        Outcome::Closed,
        "a 2 GiB request size must be refused by closing the connection"
    );
    assert_still_serving(&mut broker, &topic, "huge length prefix").await;
}

#[tokio::test]
async fn truncated_request_then_close_does_not_break_the_broker() {
    let (mut broker, topic) = setup().await;
    let mut bytes = 100i32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    // Send 10 of the promised 100 bytes, then close entirely.
    {
        let mut s = TcpStream::connect_timeout(&broker.kafka_addr(), Duration::from_secs(5))
            .expect("connect");
        s.write_all(&bytes).expect("write truncated request");
    }
    // And once more with only a write half-close, waiting for the broker.
    let outcome = send_garbage(&broker, &bytes, true, Duration::from_secs(3));
    eprintln!("truncated request with half-close: {outcome:?}");
    assert_still_serving(&mut broker, &topic, "truncated request").await;
}

#[tokio::test]
async fn unknown_api_key_does_not_break_the_broker() {
    let (mut broker, topic) = setup().await;
    // Request header v1: api_key, api_version, correlation_id, client_id.
    let mut body = Vec::new();
    body.extend_from_slice(&9999i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&42i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&[0u8; 8]);
    let mut bytes = (body.len() as i32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let outcome = send_garbage(&broker, &bytes, false, Duration::from_secs(3));
    eprintln!("unknown api key 9999: {outcome:?}");
    assert_still_serving(&mut broker, &topic, "unknown api key").await;
}

#[tokio::test]
async fn idle_and_half_open_connections_do_not_block_other_clients() {
    let (mut broker, topic) = setup().await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            TcpStream::connect_timeout(&broker.kafka_addr(), Duration::from_secs(5))
                .expect("connect idle"),
        );
    }
    // A connection stuck mid-request (length says 1000, 4 bytes sent).
    let mut stuck = TcpStream::connect_timeout(&broker.kafka_addr(), Duration::from_secs(5))
        .expect("connect stuck");
    stuck
        .write_all(&[0, 0, 3, 232, 0, 18, 0, 3])
        .expect("write partial request");
    assert_still_serving(&mut broker, &topic, "idle and stuck connections").await;
    drop(idle);
    drop(stuck);
}

/// The broker's resident memory, from `/proc` (Linux).
fn resident_bytes(broker: &Broker) -> u64 {
    let pid = broker.pid().expect("broker pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/PID/status")
}

/// A series of the broker's metrics; 0 while it has not appeared yet.
fn metric(broker: &Broker, series: &str) -> f64 {
    broker.metric(series).unwrap_or(0.0)
}

/// 1,000 connections that each declare a 1 MB request and send 100 bytes
/// of it: a declared size is a limit, not an allocation, so they cost the
/// broker little memory, and a good client keeps producing and consuming.
#[tokio::test]
async fn half_open_flood_costs_little_memory_and_good_clients_keep_working() {
    const FLOOD: usize = 1000;
    let (mut broker, topic) = setup().await;
    let before = resident_bytes(&broker);
    let mut half_open = Vec::with_capacity(FLOOD);
    let mut prefix = 1_000_000i32.to_be_bytes().to_vec();
    prefix.extend_from_slice(&pseudo_random_bytes(9, 100));
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect_timeout(&broker.kafka_addr(), Duration::from_secs(5))
            .expect("connect");
        s.write_all(&prefix).expect("write a partial frame");
        half_open.push(s);
    }
    // The broker has read them all once the connections gauge says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&broker, "sluice_connections_active") < FLOOD as f64 {
        assert!(
            Instant::now() < deadline,
            "the broker did not accept {FLOOD} connections within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_still_serving(&mut broker, &topic, "a half-open connection flood").await;
    let during = resident_bytes(&broker);
    let grown = during.saturating_sub(before);
    eprintln!(
        "resident memory: {} MB before, {} MB with {FLOOD} half-open connections (+{} KB each)",
        before >> 20,
        during >> 20,
        grown / FLOOD as u64 / 1024
    );
    assert!(
        grown < 50 << 20,
        "{FLOOD} half-open connections cost {} MB (bound: 50 MB)",
        grown >> 20
    );
    drop(half_open);
}

/// Kafka's `max.connections.per.ip` closes connections over the limit on
/// arrival; `connections.max.idle.ms` closes connections that send nothing.
#[tokio::test]
async fn connection_limits_and_idle_timeout_are_enforced() {
    let broker = Broker::start_with_args(&[
        "--max-connections-per-ip",
        "3",
        "--connections-max-idle-ms",
        "1000",
    ])
    .expect("broker should start");
    let connect = || {
        let s = TcpStream::connect_timeout(&broker.kafka_addr(), Duration::from_secs(5))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set read timeout");
        s
    };
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect()).collect();
    // Make sure the broker admitted all three before the fourth.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&broker, "sluice_connections_active") < 3.0 {
        assert!(Instant::now() < deadline, "three connections not admitted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut fourth = connect();
    let mut byte = [0u8; 1];
    let refused_at = Instant::now();
    loop {
        match fourth.read(&mut byte) {
            Ok(0) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(
                    refused_at.elapsed() < Duration::from_millis(900),
                    "a fourth connection from one address stayed open (max-connections-per-ip 3)"
                );
            }
            Ok(_) | Err(_) => break,
        }
    }
    assert_eq!(
        metric(
            &broker,
            "sluice_connections_refused_total{limit=\"per_ip\"}"
        ),
        1.0
    );
    // The held connections never send anything: closed after ~1 s idle.
    let started = Instant::now();
    for s in &mut held {
        loop {
            match s.read(&mut byte) {
                Ok(0) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "an idle connection was not closed within 10 s (connections-max-idle-ms 1000)"
                    );
                }
                Ok(_) | Err(_) => break,
            }
        }
    }
    assert!(metric(&broker, "sluice_connections_idle_closed_total") >= 3.0);
    // With the idle connections gone there is room again.
    let mut fresh = connect();
    assert!(
        matches!(fresh.read(&mut byte), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "a connection after the idle ones closed is admitted"
    );
}

/// A Produce frame (v8, header v1) for one empty partition of `topic`.
fn produce_frame(topic: &str, acks: i16) -> Vec<u8> {
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Produce as i16;
    header.request_api_version = 8;
    header.correlation_id = 7;
    header.client_id = Some(StrBytes::from_static_str("acks0"));
    let mut part = PartitionProduceData::default();
    part.index = 0;
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data = vec![part];
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = 5000;
    req.topic_data = vec![t];
    let mut body = BytesMut::new();
    header.encode(&mut body, 1).expect("header");
    req.encode(&mut body, 8).expect("produce");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// An acks=0 client reads no answer, so a produce that fails closes its
/// connection (as Kafka does: the client then refreshes its metadata); with
/// acks=1 the same failure is answered and the connection stays.
#[tokio::test]
async fn a_failed_acks_0_produce_closes_the_connection() {
    let (broker, _topic) = setup().await;
    let missing = unique_name("no-such-topic");
    let wait = Duration::from_secs(3);
    assert_eq!(
        send_garbage(&broker, &produce_frame(&missing, 0), false, wait),
        Outcome::Closed
    );
    assert!(matches!(
        send_garbage(&broker, &produce_frame(&missing, 1), false, wait),
        Outcome::Replied(_)
    ));
}
