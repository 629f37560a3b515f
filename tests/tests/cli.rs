//! The `sluice-broker topic` and `cluster` commands against a real 3-broker
//! cluster, run as a user runs them (the binary, its stdout, stderr and
//! exit status): creating, listing, describing, altering and deleting
//! topics with plugin bindings as flags, cluster health through a broker
//! kill, and the error paths (unknown topic, invalid config, bad flag,
//! unreachable broker) with their exit codes (1 refused, 2 usage, 3
//! unreachable).

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::{example_plugin, unique_name};

/// Runs `sluice-broker ARGS` against `brokers`.
fn cli(brokers: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = std::process::Command::new(sluice_tests::broker_binary()?);
    cmd.args(args).env("SLUICE_BROKERS", brokers);
    Ok(cmd.output()?)
}

/// Runs a command that must succeed and parses its `--output json`.
fn json(brokers: &str, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = cli(brokers, &all)?;
    ensure!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{args:?}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `attempt` until it succeeds, for up to a minute.
fn until<T>(attempt: impl Fn() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `cluster status --output json` until `done` holds (brokers learn of a
/// kill from the controller's fencing, not at once).
fn status_until(brokers: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    json_until(brokers, &["cluster", "status"], done)
}

/// `ARGS --output json` until its answer satisfies `done`, for up to a
/// minute; the error names the last answer.
fn json_until(brokers: &str, args: &[&str], done: impl Fn(&Value) -> bool) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli(brokers, &all)?;
        if let Ok(answer) = serde_json::from_slice::<Value>(&out.stdout)
            && done(&answer)
        {
            return Ok(answer);
        }
        ensure!(
            Instant::now() < deadline,
            "{args:?} never matched; last: {} {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn topics_are_managed_from_the_command_line_on_three_brokers() -> Result<()> {
    let cluster = Cluster::start(3, FAST_FAILOVER)?;
    let b = cluster.bootstrap();
    cluster.upload_plugin(
        "tenant-router",
        "partitioner",
        &example_plugin("tenant_router.wasm")?,
    )?;
    cluster.upload_plugin(
        "stamp",
        "interceptor",
        &example_plugin("stamp_header.wasm")?,
    )?;
    let topic = unique_name("cli");

    let out = cli(
        &b,
        &[
            "topic",
            "create",
            &topic,
            "-p",
            "6",
            "-r",
            "3",
            "-c",
            "retention.ms=3600000",
            "--partitioner",
            "tenant-router",
            "--interceptor",
            "stamp",
        ],
    )?;
    ensure!(out.status.success(), "create: {}", stderr(&out));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "created topic {topic} (6 partitions, replication factor 3)"
        )),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Any broker describes it the same way: six partitions on three
    // replicas each, every broker leading some, the bindings as configs
    // (the other brokers learn of the topic a moment after the one that
    // created it answered, as in Kafka).
    let described = until(|| json(cluster.addr(2), &["topic", "describe", &topic]))?;
    let partitions = described["partitions"].as_array().context("partitions")?;
    ensure!(partitions.len() == 6, "{described}");
    for p in partitions {
        let replicas = p["replicas"].as_array().context("replicas")?;
        ensure!(replicas.len() == 3, "{p}");
        ensure!(replicas.contains(&p["leader"]), "{p}");
    }
    ensure!(
        described["configs"]["sluice.partitioner"] == "tenant-router",
        "{described}"
    );
    ensure!(
        described["configs"]["sluice.interceptors"] == "stamp",
        "{described}"
    );
    ensure!(
        described["configs"]["retention.ms"] == "3600000",
        "{described}"
    );

    let listed = json(&b, &["topic", "list"])?;
    let row = listed
        .as_array()
        .context("list")?
        .iter()
        .find(|t| t["name"] == topic.as_str())
        .context("topic not listed")?;
    ensure!(
        row["partitions"] == 6 && row["replication_factor"] == 3,
        "{row}"
    );
    // Internal topics only with --internal.
    ensure!(
        !listed
            .as_array()
            .context("list")?
            .iter()
            .any(|t| t["internal"] == true),
        "{listed}"
    );

    // Alter: more partitions, a config removed, a binding dropped.
    let out = cli(
        &b,
        &[
            "topic",
            "alter",
            &topic,
            "-p",
            "8",
            "--delete-config",
            "retention.ms",
            "--delete-config",
            "sluice.interceptors",
        ],
    )?;
    ensure!(out.status.success(), "alter: {}", stderr(&out));
    let described = json(&b, &["topic", "describe", &topic])?;
    ensure!(
        described["partitions"].as_array().map(Vec::len) == Some(8),
        "{described}"
    );
    ensure!(
        described["configs"].get("retention.ms").is_none(),
        "{described}"
    );
    ensure!(
        described["configs"].get("sluice.interceptors").is_none(),
        "{described}"
    );
    ensure!(
        described["configs"]["sluice.partitioner"] == "tenant-router",
        "{described}"
    );

    // A refused alter changes nothing: fewer partitions than today is
    // refused, and the config given with it is not set either.
    let shrink = cli(
        &b,
        &[
            "topic",
            "alter",
            &topic,
            "-p",
            "2",
            "-c",
            "retention.ms=5000",
        ],
    )?;
    ensure!(shrink.status.code() == Some(1), "{shrink:?}");
    ensure!(
        stderr(&shrink).contains("INVALID_PARTITIONS"),
        "{}",
        stderr(&shrink)
    );
    let unchanged = json(&b, &["topic", "describe", &topic])?;
    ensure!(
        unchanged["configs"].get("retention.ms").is_none(),
        "{unchanged}"
    );
    ensure!(
        unchanged["partitions"].as_array().map(Vec::len) == Some(8),
        "{unchanged}"
    );

    // Refusals exit 1 with the broker's reason.
    let again = cli(&b, &["topic", "create", &topic])?;
    ensure!(again.status.code() == Some(1), "{again:?}");
    ensure!(
        stderr(&again).contains("TOPIC_ALREADY_EXISTS"),
        "{}",
        stderr(&again)
    );
    let unbound = cli(
        &b,
        &["topic", "create", &unique_name("cli"), "--filter", "nosuch"],
    )?;
    ensure!(unbound.status.code() == Some(1), "{unbound:?}");
    ensure!(
        stderr(&unbound).contains("'nosuch' is not uploaded"),
        "{}",
        stderr(&unbound)
    );
    let invalid = cli(&b, &["topic", "alter", &topic, "-c", "retention.ms=soon"])?;
    ensure!(invalid.status.code() == Some(1), "{invalid:?}");
    ensure!(
        stderr(&invalid).contains("INVALID_CONFIG"),
        "{}",
        stderr(&invalid)
    );
    let dry = cli(
        &b,
        &[
            "topic",
            "create",
            &unique_name("cli"),
            "-r",
            "4",
            "--dry-run",
        ],
    )?;
    ensure!(
        dry.status.code() == Some(1),
        "a 4-replica topic on 3 brokers: {dry:?}"
    );
    ensure!(
        stderr(&dry).contains("INVALID_REPLICATION_FACTOR"),
        "{}",
        stderr(&dry)
    );

    let out = cli(&b, &["topic", "delete", &topic])?;
    ensure!(out.status.success(), "delete: {}", stderr(&out));
    let gone = cli(&b, &["topic", "describe", &topic])?;
    ensure!(gone.status.code() == Some(1), "{gone:?}");
    ensure!(
        stderr(&gone).contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        stderr(&gone)
    );
    let gone = cli(&b, &["topic", "delete", &topic])?;
    ensure!(gone.status.code() == Some(1), "{gone:?}");
    ensure!(
        stderr(&gone).contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        stderr(&gone)
    );
    Ok(())
}

#[test]
fn cluster_status_follows_a_broker_kill() -> Result<()> {
    let mut cluster = Cluster::start(3, FAST_FAILOVER)?;
    let b = cluster.bootstrap();
    let topic = unique_name("cli-status");
    let out = cli(&b, &["topic", "create", &topic, "-p", "3", "-r", "3"])?;
    ensure!(out.status.success(), "create: {}", stderr(&out));

    let under = |s: &Value| {
        s["under_replicated"]
            .as_array()
            .map(|u| u.iter().filter(|p| p["topic"] == topic.as_str()).count())
            .unwrap_or(usize::MAX)
    };
    let healthy = status_until(&b, |s| {
        s["brokers"].as_array().map(Vec::len) == Some(3) && under(s) == 0
    })?;
    ensure!(healthy["cluster_id"].is_string(), "{healthy}");
    let controller = healthy["controller"].as_i64().context("controller")?;
    ensure!((0..3).contains(&controller), "{healthy}");

    // The controller quorum, asked of each broker alone: the two that do
    // not lead it forward DescribeQuorum to the one that does, so all
    // three name the same leader, in the same epoch, with three voters.
    let caught_up = |s: &Value| {
        let q = &s["quorum"];
        let ends: Vec<i64> = q["voters"]
            .as_array()
            .map(|v| v.iter().filter_map(|m| m["log_end"].as_i64()).collect())
            .unwrap_or_default();
        ends.len() == 3 && ends.iter().all(|e| *e > 0 && *e == ends[0])
    };
    let mut seen = Vec::new();
    for i in 0..3 {
        let s = status_until(cluster.addr(i), caught_up)?;
        seen.push((s["quorum"]["leader"].clone(), s["quorum"]["epoch"].clone()));
    }
    ensure!(
        seen.iter().all(|l| *l == seen[0]),
        "brokers disagree on the quorum: {seen:?}"
    );
    let quorum_leader = seen[0].0.as_i64().context("quorum leader")?;
    ensure!((0..3).contains(&quorum_leader), "{seen:?}");
    let table = cli(&b, &["cluster", "status"])?;
    ensure!(
        String::from_utf8_lossy(&table.stdout)
            .contains(&format!("QUORUM      leader {quorum_leader}")),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    // Broker 2 dies: once the controller fences it, its replicas leave
    // every ISR; every partition still has a leader.
    cluster.kill(2);
    let live = format!("{},{}", cluster.addr(0), cluster.addr(1));
    let degraded = status_until(&live, |s| {
        under(s) == 3 && s["quorum"]["leader"].as_i64().is_some_and(|l| l != 2)
    })?;
    ensure!(
        degraded["leaderless"].as_array().is_some_and(Vec::is_empty),
        "{degraded}"
    );
    let table = cli(&live, &["cluster", "status"])?;
    ensure!(table.status.success(), "{table:?}");
    ensure!(
        String::from_utf8_lossy(&table.stdout).contains("under-replicated"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    cluster.restart(2)?;
    status_until(&b, |s| {
        s["brokers"].as_array().map(Vec::len) == Some(3) && under(s) == 0
    })?;
    Ok(())
}

#[test]
fn usage_and_connection_errors_have_their_own_exit_codes() -> Result<()> {
    // Nothing listens on port 1.
    let unreachable = cli("127.0.0.1:1", &["topic", "list"])?;
    ensure!(unreachable.status.code() == Some(3), "{unreachable:?}");
    ensure!(
        stderr(&unreachable).contains("no broker reachable at 127.0.0.1:1"),
        "{}",
        stderr(&unreachable)
    );
    let bad_flag = cli(
        "127.0.0.1:1",
        &["topic", "create", "t", "--partitions", "many"],
    )?;
    ensure!(bad_flag.status.code() == Some(2), "{bad_flag:?}");
    ensure!(
        stderr(&bad_flag).contains("--partitions"),
        "{}",
        stderr(&bad_flag)
    );
    let bad_config = cli(
        "127.0.0.1:1",
        &["topic", "create", "t", "-c", "retention.ms"],
    )?;
    ensure!(bad_config.status.code() == Some(2), "{bad_config:?}");
    ensure!(
        stderr(&bad_config).contains("KEY=VALUE"),
        "{}",
        stderr(&bad_config)
    );
    let nothing = cli("127.0.0.1:1", &["topic", "alter", "t"])?;
    ensure!(nothing.status.code() == Some(1), "{nothing:?}");
    ensure!(
        stderr(&nothing).contains("nothing to change"),
        "{}",
        stderr(&nothing)
    );
    Ok(())
}

#[test]
fn a_broker_that_takes_the_connection_but_never_answers_is_skipped() -> Result<()> {
    // Bound and listening, never read: the kernel completes connections.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent = silent.local_addr()?.to_string();
    let broker = sluice_tests::Broker::start()?;
    let out = cli(
        &format!("{silent},{}", broker.bootstrap()),
        &["topic", "list"],
    )?;
    ensure!(out.status.success(), "{}", stderr(&out));
    let alone = cli(&silent, &["topic", "list"])?;
    ensure!(alone.status.code() == Some(3), "{alone:?}");
    ensure!(
        stderr(&alone).contains("did not answer ApiVersions"),
        "{}",
        stderr(&alone)
    );
    Ok(())
}

/// Sends `n` records to `partition` and waits for their acknowledgements.
async fn produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    n: usize,
) -> Result<()> {
    for i in 0..n {
        let value = format!("record-{partition}-{i}");
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(())
}

/// `group describe` until `done` holds (commits and rebalances land a
/// moment after the client's call returns).
fn describe_until(brokers: &str, group: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    json_until(brokers, &["group", "describe", group], done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_show_members_and_lag_through_a_coordinator_kill() -> Result<()> {
    use rdkafka::consumer::{CommitMode, Consumer};
    let mut cluster = Cluster::start(3, FAST_FAILOVER)?;
    let b = cluster.bootstrap();
    let topic = unique_name("cli-lag");
    let out = cli(&b, &["topic", "create", &topic, "-p", "3", "-r", "3"])?;
    ensure!(out.status.success(), "create: {}", stderr(&out));
    let producer = sluice_tests::future_producer(&b, &[])?;
    for p in 0..3 {
        produce(&producer, &topic, p, 10).await?;
    }

    let group = unique_name("cli-group");
    let consumer = sluice_tests::stream_consumer(&b, &[("group.id", &group)])?;
    consumer.subscribe(&[&topic])?;
    sluice_tests::consume_n(&consumer, 30, Duration::from_secs(60)).await?;
    let mut positions = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        positions.add_partition_offset(&topic, p, rdkafka::Offset::Offset(10))?;
    }
    consumer.commit(&positions, CommitMode::Sync)?;

    let listed = json(&b, &["group", "list"])?;
    ensure!(
        listed
            .as_array()
            .context("list")?
            .iter()
            .any(|g| g["group"] == group.as_str()),
        "{listed}"
    );
    // Every partition committed at its end, owned by the one member.
    let caught_up = |d: &Value| {
        d["partitions"].as_array().is_some_and(|ps| {
            ps.len() == 3
                && ps.iter().all(|p| {
                    p["committed"] == 10
                        && p["log_end"] == 10
                        && p["lag"] == 0
                        && p["member"].is_string()
                })
        }) && d["members"].as_array().map(Vec::len) == Some(1)
    };
    let described = describe_until(&b, &group, caught_up)?;
    ensure!(
        described["state"] == "Stable" && described["total_lag"] == 0,
        "{described}"
    );

    // Five more records on partition 0: lag 5 there and in total.
    produce(&producer, &topic, 0, 5).await?;
    let lagging = |d: &Value| {
        d["total_lag"] == 5
            && d["partitions"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["partition"] == 0 && p["lag"] == 5 && p["log_end"] == 15)
            })
    };
    describe_until(&b, &group, lagging)?;
    let table = cli(&b, &["group", "describe", &group])?;
    ensure!(table.status.success(), "{table:?}");
    ensure!(
        String::from_utf8_lossy(&table.stdout).contains("TOTAL LAG    5"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    // The consumer leaves and the coordinator dies: the next coordinator
    // still has the committed offsets, and the lag is the same.
    // Its leave is in the group's state before the kill: a consumer that
    // dies with the coordinator is a member until its session times out.
    drop(consumer);
    let left = |d: &Value| lagging(d) && d["members"].as_array().is_some_and(Vec::is_empty);
    let described = describe_until(&b, &group, left)?;
    let coordinator = described["coordinator"].as_i64().context("coordinator")? as usize;
    cluster.kill(coordinator);
    let live: Vec<&str> = (0..3)
        .filter(|i| *i != coordinator)
        .map(|i| cluster.addr(i))
        .collect();
    let live = live.join(",");
    let moved = describe_until(&live, &group, |d| {
        lagging(d) && d["coordinator"].as_i64() != Some(coordinator as i64)
    })?;
    ensure!(
        moved["members"].as_array().is_some_and(Vec::is_empty),
        "{moved}"
    );

    // (Its offsets partition may still be moving to a new leader.)
    until(|| {
        let unknown = cli(&live, &["group", "describe", "no-such-group"])?;
        ensure!(unknown.status.code() == Some(1), "{unknown:?}");
        ensure!(
            stderr(&unknown).contains("does not exist"),
            "{}",
            stderr(&unknown)
        );
        Ok(())
    })?;
    Ok(())
}

/// `plugin test` on `module` with `records` (JSON lines) as input.
fn plugin_test(
    module: &std::path::Path,
    kind: &str,
    records: &[&str],
    extra: &[&str],
) -> Result<Output> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("records.jsonl");
    std::fs::write(&input, records.join("\n"))?;
    let mut args = vec![
        "plugin".to_string(),
        "test".to_string(),
        module.display().to_string(),
        "--kind".to_string(),
        kind.to_string(),
        "--input".to_string(),
        input.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // No broker: nothing listens at the address it would use.
    cli("127.0.0.1:1", &args)
}

fn example(file: &str) -> std::path::PathBuf {
    sluice_tests::example_plugin_path(file)
}

fn misbehaving(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/fixtures")
        .join(format!("{name}.wat"))
}

fn parsed(out: &Output) -> Result<Value> {
    ensure!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        stderr(out)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn plugin_test_shows_what_the_broker_would_do_without_a_broker() -> Result<()> {
    use sluice_tests::load::tenant_partition;
    // The partitioner: each tenant where the broker would put it, on the
    // partition count given.
    let records = [
        r#"{"key":"1","value":"{\"tenant\":\"acme\",\"email\":\"a@acme.com\"}"}"#,
        r#"{"key":"2","value":"{\"tenant\":\"globex\",\"email\":\"b@globex.com\"}"}"#,
        r#"{"key":"3","value":"{\"tenant\":\"initech\"}","headers":{"keep":"false"}}"#,
        r#"{"key":"4","value":"{\"level\":\"debug\"}"}"#,
    ];
    let routed = parsed(&plugin_test(
        &example("tenant_router.wasm"),
        "partitioner",
        &records,
        &["--partitions", "12", "-o", "json"],
    )?)?;
    let routed = routed.as_array().context("array")?;
    ensure!(routed.len() == 4, "{routed:?}");
    for (i, tenant) in [(0, "acme"), (1, "globex"), (2, "initech")] {
        ensure!(
            routed[i]["partition"] == tenant_partition(tenant, 12),
            "{tenant}: {}",
            routed[i]
        );
    }

    // The interceptor: rewritten records, as the broker would store them.
    let redacted = parsed(&plugin_test(
        &example("redact.wasm"),
        "interceptor",
        &records,
        &["-o", "json"],
    )?)?;
    ensure!(redacted[0]["verdict"] == "keep", "{redacted}");
    let value = redacted[0]["record"]["value"].as_str().context("value")?;
    ensure!(
        !value.contains("a@acme.com") && value.contains("acme"),
        "{value}"
    );

    // The filter: kept and dropped.
    let filtered = parsed(&plugin_test(
        &example("keep_filter.wasm"),
        "filter",
        &records,
        &["-o", "json"],
    )?)?;
    let kept: Vec<bool> = filtered
        .as_array()
        .context("array")?
        .iter()
        .map(|r| r["kept"] == true)
        .collect();
    ensure!(kept == [true, true, false, false], "{filtered}");
    let table = plugin_test(&example("keep_filter.wasm"), "filter", &records, &[])?;
    ensure!(
        String::from_utf8_lossy(&table.stdout).contains("dropped"),
        "{table:?}"
    );

    // A rejecting interceptor: its reason, and what that does to a batch.
    let guarded = plugin_test(
        &example("size_guard.wasm"),
        "interceptor",
        &[
            r#"{"value":"small","headers":{"schema":"v1"}}"#,
            &format!(
                r#"{{"value":"{}","headers":{{"schema":"v1"}}}}"#,
                "x".repeat(2000)
            ),
        ],
        &[],
    )?;
    ensure!(guarded.status.success(), "{guarded:?}");
    let shown = String::from_utf8_lossy(&guarded.stdout);
    ensure!(
        shown.contains("value of 2000 bytes exceeds the 1024-byte limit")
            && shown.contains("record 1 is rejected")
            && shown.contains("POLICY_VIOLATION"),
        "{shown}"
    );
    Ok(())
}

#[test]
fn plugin_test_reports_misbehaving_modules_as_the_broker_would() -> Result<()> {
    let records = [r#"{"key":"k","value":"v"}"#];
    for (fixture, expected) in [
        ("trap", "trapped"),
        ("spin", "execution deadline"),
        ("membomb", "memory limit"),
        ("recurse", "call stack exhausted"),
        ("huge-output", "over the"),
    ] {
        let out = plugin_test(&misbehaving(fixture), "partitioner", &records, &[])?;
        ensure!(out.status.code() == Some(1), "{fixture}: {out:?}");
        ensure!(
            stderr(&out).contains(expected) && stderr(&out).contains("would fail"),
            "{fixture}: {}",
            stderr(&out)
        );
    }
    // A module the broker would not accept at all.
    let refused = plugin_test(&misbehaving("bad-import"), "partitioner", &records, &[])?;
    ensure!(refused.status.code() == Some(1), "{refused:?}");
    ensure!(
        stderr(&refused).contains("would refuse this module"),
        "{}",
        stderr(&refused)
    );
    // The sandbox limits come from the same settings as a topic's.
    let tight = plugin_test(
        &example("tenant_router.wasm"),
        "partitioner",
        &records,
        &["--memory-bytes", "65536"],
    )?;
    ensure!(tight.status.code() == Some(1), "{tight:?}");
    ensure!(stderr(&tight).contains("memory"), "{}", stderr(&tight));
    // Input it cannot read.
    let bad = plugin_test(
        &example("tenant_router.wasm"),
        "partitioner",
        &[r#"{"value":"x","partition":2}"#],
        &[],
    )?;
    ensure!(bad.status.code() == Some(1), "{bad:?}");
    ensure!(
        stderr(&bad).contains("line 1: unknown field 'partition'"),
        "{}",
        stderr(&bad)
    );
    let wrong_kind = plugin_test(&example("tenant_router.wasm"), "router", &records, &[])?;
    ensure!(wrong_kind.status.code() == Some(1), "{wrong_kind:?}");
    ensure!(
        stderr(&wrong_kind).contains("unknown plugin kind"),
        "{}",
        stderr(&wrong_kind)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_between_brokers_from_the_command_line() -> Result<()> {
    let cluster = Cluster::start(3, FAST_FAILOVER)?;
    let b = cluster.bootstrap();
    let topic = unique_name("cli-move");
    let out = cli(&b, &["topic", "create", &topic, "-p", "2", "-r", "2"])?;
    ensure!(out.status.success(), "create: {}", stderr(&out));
    let producer = sluice_tests::future_producer(&b, &[])?;
    produce(&producer, &topic, 0, 20).await?;

    let moved = cli(
        &b,
        &[
            "topic",
            "move",
            &topic,
            "--partition",
            "0,1",
            "--replicas",
            "2,1",
        ],
    )?;
    ensure!(moved.status.success(), "move: {}", stderr(&moved));
    json_until(&b, &["topic", "describe", &topic], |d| {
        d["partitions"].as_array().is_some_and(|ps| {
            ps.len() == 2
                && ps.iter().all(|p| {
                    p["replicas"] == json!([2, 1]) && p["isr"].as_array().map(Vec::len) == Some(2)
                })
        })
    })?;
    ensure!(json(&b, &["topic", "moves"])? == json!([]));
    let table = cli(&b, &["topic", "moves", &topic])?;
    ensure!(
        table.status.success() && String::from_utf8_lossy(&table.stdout).contains("REMOVING"),
        "{table:?}"
    );

    // Nothing to cancel; an unknown broker; no target at all.
    let cancel = cli(
        &b,
        &["topic", "move", &topic, "--partition", "0", "--cancel"],
    )?;
    ensure!(cancel.status.code() == Some(1), "{cancel:?}");
    ensure!(
        stderr(&cancel).contains("NO_REASSIGNMENT_IN_PROGRESS"),
        "{}",
        stderr(&cancel)
    );
    let unknown = cli(
        &b,
        &[
            "topic",
            "move",
            &topic,
            "--partition",
            "0",
            "--replicas",
            "0,9",
        ],
    )?;
    ensure!(unknown.status.code() == Some(1), "{unknown:?}");
    ensure!(
        stderr(&unknown).contains("INVALID_REPLICA_ASSIGNMENT"),
        "{}",
        stderr(&unknown)
    );
    let no_target = cli(&b, &["topic", "move", &topic, "--partition", "0"])?;
    ensure!(no_target.status.code() == Some(2), "{no_target:?}");
    Ok(())
}
