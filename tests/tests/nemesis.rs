//! The nemesis: for a bounded time, a random broker of a three-broker
//! cluster is SIGKILLed every few seconds and restarted, while an
//! idempotent acks=all producer writes to every partition. At the end every
//! acknowledged record must be stored exactly once, in order, at the
//! offset it was acknowledged with (`history::check`).
//!
//! CI runs it for `SLUICE_NEMESIS_SECS` (default 30: five or six kills);
//! run it longer by hand, e.g.
//! `SLUICE_NEMESIS_SECS=600 cargo test -p sluice-tests --test nemesis -- --nocapture`.
//! `SLUICE_NEMESIS_SEED` replays a run's choice of victims.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rdkafka::admin::{NewTopic, TopicReplication};
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::load::{Load, all_in_sync, plain, read_all};
use sluice_tests::{admin_client, admin_opts, unique_name};

const PARTITIONS: i32 = 6;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// xorshift64*: reproducible victims from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_broker_kills_under_idempotent_load_lose_and_duplicate_nothing() -> Result<()> {
    let secs = env_u64("SLUICE_NEMESIS_SECS").unwrap_or(30);
    let seed = env_u64("SLUICE_NEMESIS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    eprintln!("nemesis: {secs} s, seed {seed}");
    let mut rng = Rng(seed);
    let mut args: Vec<&str> = FAST_FAILOVER.to_vec();
    args.extend([
        "--replica-lag-time-max-ms",
        "3000",
        "--leader-imbalance-check-interval-ms",
        "1000",
    ]);
    let mut cluster = Cluster::start(3, &args)?;
    let topic = unique_name("nemesis");
    let admin = admin_client(&cluster.bootstrap())?;
    let t = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2");
    for r in admin.create_topics([&t], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    let load = Load::start(&cluster.bootstrap(), &topic, PARTITIONS, plain)?;
    let started = Instant::now();
    let mut kills = 0;
    tokio::time::sleep(Duration::from_secs(1)).await;
    while started.elapsed() < Duration::from_secs(secs) {
        let victim = (rng.next() % 3) as usize;
        let down = Duration::from_millis(500 + rng.next() % 2000);
        eprintln!(
            "nemesis: t={:.1}s kill broker {victim} for {down:?}",
            started.elapsed().as_secs_f64()
        );
        cluster.kill(victim);
        kills += 1;
        tokio::time::sleep(down).await;
        // Back before the next kill (two brokers down at once would stop
        // acks=all with min.insync.replicas=2, proving nothing more).
        cluster.restart(victim)?;
        tokio::time::sleep(Duration::from_millis(1500 + rng.next() % 3000)).await;
    }
    let via = 0;
    cluster.wait_until("all replicas back in sync", Duration::from_secs(60), |c| {
        all_in_sync(c, via, &topic)
    })?;
    let history = load.stop().await?;
    let reads = read_all(&cluster.bootstrap(), &topic, PARTITIONS, plain).await?;
    let report = history.check(&reads);
    eprintln!("nemesis: {kills} kills in {secs} s (seed {seed}); history: {report}");
    // What an idempotent producer's exactly-once rests on, from the brokers'
    // own logs: refused sequences and the epoch bumps that follow them.
    let lines = |what: &str| -> usize {
        cluster
            .brokers
            .iter()
            .map(|b| b.stderr_log().lines().filter(|l| l.contains(what)).count())
            .sum()
    };
    eprintln!(
        "nemesis: idempotent batches refused {}, producer epoch bumps {}",
        lines("idempotent batch refused"),
        lines("idempotent producer reset")
    );
    assert!(kills >= 3, "the nemesis ran: {kills} kills");
    assert!(report.acked > 1000, "the load ran: {report}");
    if !report.is_clean() {
        // Every broker's log, for the post-mortem.
        for b in &cluster.brokers {
            b.dump_log();
        }
    }
    assert!(report.is_clean(), "{report}");
    Ok(())
}
