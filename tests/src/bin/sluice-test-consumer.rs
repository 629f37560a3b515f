//! `sluice-test-consumer`: a group consumer run as a child process by the
//! consumer-group tests, so a test can SIGKILL it (a real crash: no
//! LeaveGroup, no final commit, the broker only notices through the session
//! timeout) or stop it cleanly.
//!
//! Protocol, one line each:
//! * stdout: `ready` after subscribing; `assigned <p,p,..>` / `revoked
//!   <p,p,..>` after each rebalance callback; `rec <partition> <offset>
//!   <value>` for every processed record, written and flushed *before* the
//!   chunk's offsets are committed synchronously; `commit-ok <n>` /
//!   `commit-err <error>`; `closed` after a clean close.
//! * stdin: `stop` (or end of input) closes the consumer cleanly (leaving
//!   the group) and exits 0.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_tests::base_config;

#[derive(Parser, Debug)]
#[command(name = "sluice-test-consumer")]
struct Args {
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 6000)]
    session_timeout_ms: u32,
    #[arg(long, default_value_t = 500)]
    heartbeat_interval_ms: u32,
    #[arg(long, default_value_t = 10_000)]
    max_poll_interval_ms: u32,
    /// Largest number of records processed (and committed) as one chunk.
    #[arg(long, default_value_t = 500)]
    chunk: usize,
    /// Partition assignment strategy (librdkafka name).
    #[arg(long, default_value = "range,roundrobin")]
    assignor: String,
    /// group.instance.id for static membership.
    #[arg(long)]
    instance_id: Option<String>,
}

struct Ctx;

impl ClientContext for Ctx {}

fn partitions(tpl: &TopicPartitionList) -> String {
    let mut ps: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    ps.sort_unstable();
    ps.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => say(&format!("assigned {}", partitions(tpl))),
            Rebalance::Revoke(tpl) => say(&format!("revoked {}", partitions(tpl))),
            Rebalance::Error(e) => say(&format!("rebalance-error {e}")),
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "stop" => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }

    let mut cfg = base_config(&args.bootstrap);
    cfg.set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", args.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            args.heartbeat_interval_ms.to_string(),
        )
        .set(
            "max.poll.interval.ms",
            args.max_poll_interval_ms.to_string(),
        )
        .set("partition.assignment.strategy", &args.assignor);
    if let Some(id) = &args.instance_id {
        cfg.set("group.instance.id", id);
    }
    let consumer: BaseConsumer<Ctx> = cfg
        .create_with_context(Ctx)
        .context("cannot create the consumer")?;
    consumer
        .subscribe(&[&args.topic])
        .context("cannot subscribe")?;
    say("ready");

    let mut lines = String::new();
    while !stop.load(Ordering::SeqCst) {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        lines.clear();
        let mut n = 0usize;
        let mut timeout = Duration::from_millis(100);
        while n < args.chunk {
            match consumer.poll(timeout) {
                Some(Ok(m)) => {
                    let value = m
                        .payload()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .unwrap_or("?");
                    lines.push_str(&format!("rec {} {} {value}\n", m.partition(), m.offset()));
                    next.insert(m.partition(), m.offset() + 1);
                    n += 1;
                    timeout = Duration::ZERO;
                }
                Some(Err(e)) => {
                    say(&format!("consumer-error {e}"));
                    break;
                }
                None => break,
            }
        }
        if n == 0 {
            continue;
        }
        // "Process" the chunk: report it, flushed, before committing.
        {
            let mut out = std::io::stdout().lock();
            out.write_all(lines.as_bytes())
                .context("cannot write records to stdout")?;
            out.flush().context("cannot flush stdout")?;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &next {
            tpl.add_partition_offset(&args.topic, *p, Offset::Offset(*o))
                .context("cannot build the commit list")?;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => say(&format!("commit-ok {n}")),
            Err(e) => say(&format!("commit-err {e}")),
        }
    }
    consumer.unsubscribe();
    drop(consumer);
    say("closed");
    Ok(())
}
