//! Three quorum members in one process, talking over real TCP.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

use super::*;
use crate::image::Applied;

struct Member {
    quorum: Arc<Quorum>,
    server: tokio::task::JoinHandle<()>,
}

/// Serves quorum frames on `listener` (the broker does this on its Kafka
/// port). Aborting the task closes every connection it accepted, as a
/// process exit would: a stopped member must not keep answering on old
/// connections.
fn serve(quorum: Arc<Quorum>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let q = quorum.clone();
            connections.spawn(async move {
                loop {
                    let Ok(len) = s.read_i32().await else { return };
                    let mut frame = vec![0u8; len.max(0) as usize];
                    if s.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    let out = q.handle_frame(&frame).await;
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

async fn start(
    id: i32,
    voters: &BTreeMap<i32, String>,
    dir: &std::path::Path,
    listener: TcpListener,
) -> Member {
    start_with(id, voters, dir, listener, SNAPSHOT_EVERY).await
}

async fn start_with(
    id: i32,
    voters: &BTreeMap<i32, String>,
    dir: &std::path::Path,
    listener: TcpListener,
    snapshot_every: u64,
) -> Member {
    let quorum = Arc::new(
        Quorum::start(QuorumConfig {
            node_id: id,
            voters: voters.clone(),
            dir: dir.join(format!("q{id}")),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
            snapshot_every,
            transport: sluice_client::Transport::Plain,
        })
        .await
        .expect("start"),
    );
    let server = serve(quorum.clone(), listener);
    Member { quorum, server }
}

/// Three members on ephemeral ports, each knowing the others.
async fn start_three(
    dir: &std::path::Path,
    snapshot_every: u64,
) -> (BTreeMap<i32, String>, Vec<Member>) {
    let mut listeners = Vec::new();
    let mut voters = BTreeMap::new();
    for id in 0..3 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        voters.insert(id, l.local_addr().expect("addr").to_string());
        listeners.push(l);
    }
    let mut members = Vec::new();
    for (id, l) in listeners.into_iter().enumerate() {
        members.push(start_with(id as i32, &voters, dir, l, snapshot_every).await);
    }
    (voters, members)
}

fn create(name: &str) -> Command {
    Command::CreateTopic {
        name: name.into(),
        id: Uuid::new_v4(),
        assignment: vec![vec![0, 1, 2]],
        configs: BTreeMap::new(),
    }
}

async fn register_all(q: &Quorum) {
    for id in 0..3 {
        q.propose(
            Command::RegisterBroker {
                id,
                host: "127.0.0.1".into(),
                port: 1000 + id,
                incarnation: Uuid::new_v4(),
                listeners: Default::default(),
            },
            Duration::from_secs(20),
        )
        .await
        .expect("register")
        .expect("applies");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_agree_survive_a_leader_loss_and_recover_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (voters, mut members) = start_three(dir.path(), SNAPSHOT_EVERY).await;
    // Any member can propose; non-controllers forward.
    register_all(&members[2].quorum).await;
    let r = members[1]
        .quorum
        .propose(create("a"), Duration::from_secs(20))
        .await
        .expect("committed");
    assert!(matches!(r, Ok(Applied::Topic { .. })));
    let dup = members[0]
        .quorum
        .propose(create("a"), Duration::from_secs(20))
        .await
        .expect("committed");
    assert!(dup.is_err(), "the second create is refused by apply");

    // Stop the controller; the other two elect a new one and keep going.
    let leader = members[0].quorum.controller_id().expect("leader known");
    let old = members.remove(leader as usize);
    old.server.abort();
    old.quorum.shutdown().await;
    drop(old);
    let survivor = &members[0].quorum;
    survivor
        .propose(create("b"), Duration::from_secs(20))
        .await
        .expect("committed without the old leader")
        .expect("applies");
    for m in &members {
        let mut rx = m.quorum.subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|v| v.image.topics.contains_key("b")),
        )
        .await
        .expect("replicated in time")
        .expect("running");
    }
    assert_ne!(survivor.controller_id(), Some(leader));

    // The stopped member restarts from its own disk and catches up.
    let l = TcpListener::bind(&voters[&leader]).await.expect("rebind");
    let back = start(leader, &voters, dir.path(), l).await;
    let mut rx = back.quorum.subscribe();
    let view = tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|v| v.image.topics.contains_key("b")),
    )
    .await
    .expect("caught up in time")
    .expect("running")
    .clone();
    assert!(view.image.topics.contains_key("a"));
    assert_eq!(view.image.brokers.len(), 3);
    for m in members.iter().chain([&back]) {
        m.quorum.shutdown().await;
    }
}

#[tokio::test]
async fn a_single_voter_leads_at_once_and_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let voters: BTreeMap<i32, String> = [(0, l.local_addr().expect("addr").to_string())].into();
    let m = start(0, &voters, dir.path(), l).await;
    m.quorum
        .propose(
            Command::AllocateProducerIds { count: 10 },
            Duration::from_secs(10),
        )
        .await
        .expect("committed")
        .expect("applies");
    m.server.abort();
    m.quorum.shutdown().await;
    drop(m);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let m = start(0, &voters, dir.path(), l).await;
    let r = m
        .quorum
        .propose(
            Command::AllocateProducerIds { count: 10 },
            Duration::from_secs(10),
        )
        .await
        .expect("committed")
        .expect("applies");
    assert_eq!(
        r,
        Applied::ProducerIds { first: 10 },
        "state survived the restart"
    );
    m.quorum.shutdown().await;
}

#[test]
fn peers_parse_with_clear_errors() {
    let p = parse_peers("0@a:1, 1@b:2").expect("parses");
    assert_eq!(p[&1], "b:2");
    for bad in ["x@a:1", "0@a", "0@a:1,0@b:2", "0@:1", "-1@a:1", "0@a:99999"] {
        assert!(parse_peers(bad).is_err(), "{bad}");
    }
    assert!(parse_peers("").expect("empty").is_empty());
}

/// A member that missed more than the log keeps catches up from a
/// snapshot (built, sent in chunks over the Kafka-port RPC, installed),
/// and a restart from a snapshot plus log gives the same image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_behind_member_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (voters, mut members) = start_three(dir.path(), 10).await;
    register_all(&members[0].quorum).await;
    // Stop a follower, then commit far more than the log keeps.
    let leader = members[0].quorum.controller_id().expect("leader");
    let lagger = (0..3).find(|i| *i != leader).expect("a follower");
    let stopped = members.remove(lagger as usize);
    stopped.server.abort();
    stopped.quorum.shutdown().await;
    drop(stopped);
    for i in 0..60 {
        members[0]
            .quorum
            .propose(create(&format!("t{i}")), Duration::from_secs(20))
            .await
            .expect("committed")
            .expect("applies");
    }
    let l = TcpListener::bind(&voters[&lagger]).await.expect("rebind");
    let back = start_with(lagger, &voters, dir.path(), l, 10).await;
    let mut rx = back.quorum.subscribe();
    let caught_up = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|v| v.image.topics.len() == 60),
    )
    .await;
    if caught_up.is_err() {
        panic!(
            "not caught up: applied {} topics {}; metrics {:?}; leader metrics {:?}",
            back.quorum.view().applied_index,
            back.quorum.image().topics.len(),
            back.quorum.raft_metrics(),
            members[0].quorum.raft_metrics()
        );
    }
    let view = back.quorum.view();
    assert_eq!(view.image.brokers.len(), 3);
    assert!(
        dir.path()
            .join(format!("q{lagger}"))
            .join("snapshot.json")
            .exists(),
        "the lagging member installed a snapshot"
    );
    assert_eq!(*view.image, *members[0].quorum.image());
    for m in members.iter().chain([&back]) {
        m.quorum.shutdown().await;
    }
}
