//! `sluice-broker topic ...`, `group ...` and `cluster ...`: topic, group
//! and cluster administration over a Kafka listener, through the same admin
//! client as the operator (`sluice_client::admin`), so any Kafka listener
//! (PLAINTEXT, or SSL with `--tls-ca`) serves them and the broker's ACLs
//! apply.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::json;
use sluice_client::Transport;
use sluice_client::admin::{
    Admin, ClusterView, NewTopic, PartitionMove, QuorumMember, QuorumView, TopicView,
};
use sluice_client::sasl::{Credentials, Mechanism};
use sluice_client::tls::{ClientTls, KeystoreFiles};
use sluice_metadata::plugins::keys;

use super::{CliError, ExitStatus, Output, print_table};

/// How long a broker has to answer before the next in `--brokers` is tried.
const ANSWER_PROBE: std::time::Duration = std::time::Duration::from_secs(5);

/// How to reach the cluster, shared by `topic` and `cluster`.
#[derive(Debug, Args)]
pub struct Connect {
    /// Brokers to bootstrap from (host:port, comma-separated); the first
    /// that answers serves the command.
    #[arg(
        short = 'b',
        long,
        env = "SLUICE_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,
    /// `table` for people, `json` for scripts.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// CA certificates (PEM) of an SSL listener: connect with TLS and
    /// check the broker's certificate against them.
    #[arg(long, env = "SLUICE_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// SASL mechanism of a SASL listener: PLAIN, SCRAM-SHA-256 or
    /// SCRAM-SHA-512 (with `--sasl-username`; the password from
    /// SLUICE_SASL_PASSWORD or `--sasl-password`).
    #[arg(long, env = "SLUICE_SASL_MECHANISM", global = true, requires = "sasl_username", value_parser = parse_mechanism)]
    pub sasl_mechanism: Option<Mechanism>,
    #[arg(
        long,
        env = "SLUICE_SASL_USERNAME",
        global = true,
        requires = "sasl_mechanism"
    )]
    pub sasl_username: Option<String>,
    /// Prefer SLUICE_SASL_PASSWORD: a flag shows in the process list.
    #[arg(
        long,
        env = "SLUICE_SASL_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,
    /// Client certificate chain (PEM) for a listener that wants one; its
    /// key in `--tls-key` or in the same file.
    #[arg(long, env = "SLUICE_TLS_CERT", global = true, requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "SLUICE_TLS_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions (default: the broker's, `--default-partitions`).
        #[arg(short = 'p', long, default_value_t = -1, allow_negative_numbers = true)]
        partitions: i32,
        /// Replication factor (default: 1, as Kafka's default.replication.factor).
        #[arg(short = 'r', long, default_value_t = -1, allow_negative_numbers = true)]
        replicas: i16,
        #[command(flatten)]
        configs: ConfigFlags,
        /// Check that the broker would create it, without creating it.
        #[arg(long)]
        dry_run: bool,
    },
    /// List topics with their partition count and replication factor.
    List {
        /// Include internal topics (__consumer_offsets, ...).
        #[arg(long)]
        internal: bool,
    },
    /// Show a topic's partitions (leader, replicas, in-sync replicas) and
    /// its config overrides.
    Describe {
        name: String,
        /// Every config, not only the topic's overrides.
        #[arg(long)]
        all_configs: bool,
    },
    /// Move partitions onto other brokers (AlterPartitionReassignments):
    /// the new replicas catch up in the background and the old ones leave
    /// once they are in sync; `topic moves` lists the moves under way.
    Move {
        name: String,
        /// The partitions to move (repeatable or comma-separated).
        #[arg(long = "partition", value_delimiter = ',', required = true)]
        partitions: Vec<i32>,
        /// The brokers to hold them, preferred leader first (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "cancel",
            conflicts_with = "cancel"
        )]
        replicas: Vec<i32>,
        /// Cancel their moves under way instead (back to the old replicas).
        #[arg(long)]
        cancel: bool,
    },
    /// List the partition moves under way (of the named topics, or all).
    Moves { names: Vec<String> },
    /// Change a topic: add partitions, set or delete configs, bind plugins.
    Alter {
        name: String,
        /// Grow the topic to this many partitions.
        #[arg(short = 'p', long)]
        partitions: Option<i32>,
        #[command(flatten)]
        configs: ConfigFlags,
        /// Remove a config override (repeatable): the default applies again.
        #[arg(long = "delete-config", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Delete a topic and its records.
    Delete { name: String },
}

/// Topic configs as flags: `-c key=value`, and the plugin bindings by name.
#[derive(Debug, Args)]
pub struct ConfigFlags {
    /// A topic config (repeatable), e.g. `-c retention.ms=3600000`.
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
    configs: Vec<(String, String)>,
    /// Partitioner plugin routing every record of the topic (sluice.partitioner).
    #[arg(long, value_name = "PLUGIN")]
    partitioner: Option<String>,
    /// Interceptor plugin on produce, in order (repeatable; sluice.interceptors).
    #[arg(long = "interceptor", value_name = "PLUGIN")]
    interceptors: Vec<String>,
    /// Filter plugin on produce (repeatable; sluice.filters).
    #[arg(long = "filter", value_name = "PLUGIN")]
    filters: Vec<String>,
    /// Filter plugin on fetch (repeatable; sluice.fetch.filters).
    #[arg(long = "fetch-filter", value_name = "PLUGIN")]
    fetch_filters: Vec<String>,
}

impl ConfigFlags {
    /// The configs to set; a plugin flag and a `-c` for the same key
    /// conflict.
    fn to_map(&self) -> Result<BTreeMap<String, String>, CliError> {
        let mut map = BTreeMap::new();
        for (k, v) in &self.configs {
            if map.insert(k.clone(), v.clone()).is_some() {
                return Err(CliError::refused(anyhow!("config {k} given twice")));
            }
        }
        let bindings = [
            (
                keys::PARTITIONER,
                self.partitioner.iter().cloned().collect(),
            ),
            (keys::INTERCEPTORS, self.interceptors.clone()),
            (keys::FILTERS, self.filters.clone()),
            (keys::FETCH_FILTERS, self.fetch_filters.clone()),
        ];
        for (key, plugins) in bindings {
            let plugins: Vec<String> = plugins;
            if plugins.is_empty() {
                continue;
            }
            if map.insert(key.to_string(), plugins.join(",")).is_some() {
                return Err(CliError::refused(anyhow!(
                    "{key} is given both as -c and as a plugin flag"
                )));
            }
        }
        Ok(map)
    }
}

fn parse_mechanism(s: &str) -> Result<Mechanism, String> {
    Mechanism::parse(s).ok_or_else(|| {
        format!("unknown SASL mechanism '{s}' (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")
    })
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List every consumer group of the cluster with its state.
    List,
    /// Show a group's members and, per partition, the committed offset,
    /// the log end and the lag.
    Describe { group: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Cluster id, brokers, the controller, the controller quorum (leader,
    /// epoch, each voter's log end), and partitions that are
    /// under-replicated or without a leader. Exits 1 when any partition
    /// has no leader.
    Status,
}

impl Connect {
    fn transport(&self) -> Result<Transport, CliError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(Transport::Plain);
        };
        let keystore = self.tls_cert.as_ref().map(|chain| KeystoreFiles {
            chain: chain.clone(),
            key: self.tls_key.clone(),
        });
        Transport::tls(ClientTls {
            truststore: ca.clone(),
            keystore,
            verify_hostname: true,
        })
        .map_err(CliError::refused)
    }

    /// The first broker of `--brokers` that answers.
    async fn admin(&self) -> Result<Admin, CliError> {
        let transport = self.transport()?;
        let mut failures = Vec::new();
        for addr in self
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            let admin = match Admin::open(addr, "sluice-cli", &transport).await {
                Ok(admin) => admin,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            // A broker that takes the connection but does not answer (hung,
            // or not Kafka) is skipped for the next one, as clients do.
            let probe = kafka_protocol::messages::ApiVersionsRequest::default();
            if let Err(e) = admin.connection().send(&probe, 0, ANSWER_PROBE).await {
                failures.push(format!(
                    "{addr} took the connection but did not answer ApiVersions within {ANSWER_PROBE:?}: {e}"
                ));
                continue;
            }
            let mut admin = admin;
            if let (Some(mechanism), Some(username)) = (self.sasl_mechanism, &self.sasl_username) {
                let credentials = Credentials {
                    mechanism,
                    username: username.clone(),
                    password: self.sasl_password.clone().unwrap_or_default(),
                };
                // Wrong credentials are the answer, not a broker to skip.
                admin.login(credentials).await?;
            }
            return Ok(admin);
        }
        Err(CliError {
            status: ExitStatus::Unreachable,
            error: anyhow!(
                "no broker reachable at {}: {}",
                self.brokers,
                if failures.is_empty() {
                    "no address given".to_string()
                } else {
                    failures.join("; ")
                }
            ),
        })
    }
}

/// Runs a `topic` command; what it prints goes to stdout.
pub async fn topic(connect: &Connect, cmd: TopicCommand) -> Result<(), CliError> {
    if let TopicCommand::Alter {
        partitions: None,
        configs,
        delete,
        ..
    } = &cmd
        && configs.to_map()?.is_empty()
        && delete.is_empty()
    {
        return Err(CliError::refused(anyhow!(
            "nothing to change: give --partitions, -c KEY=VALUE, a plugin flag or --delete-config"
        )));
    }
    let admin = connect.admin().await?;
    let json = connect.output == Output::Json;
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replicas,
            configs,
            dry_run,
        } => {
            let topic = NewTopic {
                name: name.clone(),
                partitions,
                replication_factor: replicas,
                assignment: Vec::new(),
                configs: configs.to_map()?,
            };
            let (partitions, rf) = admin.create_topic(&topic, dry_run).await?;
            if json {
                println!(
                    "{}",
                    json!({
                        "name": name,
                        "created": !dry_run,
                        "partitions": partitions,
                        "replication_factor": rf,
                    })
                );
            } else if dry_run {
                println!(
                    "topic {name} would be created ({partitions} partitions, replication factor {rf})"
                );
            } else {
                println!("created topic {name} ({partitions} partitions, replication factor {rf})");
            }
        }
        TopicCommand::List { internal } => {
            let view = admin.cluster(None).await?;
            let topics: Vec<&TopicView> = view
                .topics
                .iter()
                .filter(|t| internal || !t.internal)
                .collect();
            if json {
                let list: Vec<_> = topics
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "internal": t.internal,
                            "partitions": t.partitions.len(),
                            "replication_factor": replication_factor(t),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.partitions.len().to_string(),
                            replication_factor(t).to_string(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "PARTITIONS", "REPLICAS"], &rows);
            }
        }
        TopicCommand::Describe { name, all_configs } => {
            let topic = admin.topic(&name).await?.ok_or_else(|| {
                CliError::refused(anyhow!(
                    "topic {name} does not exist (UNKNOWN_TOPIC_OR_PARTITION)"
                ))
            })?;
            let configs: Vec<_> = admin
                .topic_configs(&name)
                .await?
                .into_iter()
                .filter(|c| all_configs || c.is_override)
                .collect();
            if json {
                let partitions: Vec<_> = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        json!({
                            "partition": p.index,
                            "leader": p.leader,
                            "leader_epoch": p.leader_epoch,
                            "replicas": p.replicas,
                            "isr": p.isr,
                            "offline": p.offline,
                            "error": (p.error_code != 0).then(|| sluice_client::admin::error_name(p.error_code)),
                        })
                    })
                    .collect();
                let configs: serde_json::Map<String, serde_json::Value> = configs
                    .iter()
                    .map(|c| {
                        let value = if c.sensitive { None } else { c.value.clone() };
                        (c.name.clone(), json!(value))
                    })
                    .collect();
                println!(
                    "{}",
                    json!({
                        "name": topic.name,
                        "internal": topic.internal,
                        "replication_factor": replication_factor(&topic),
                        "partitions": partitions,
                        "configs": configs,
                    })
                );
            } else {
                println!("NAME        {}", topic.name);
                println!("PARTITIONS  {}", topic.partitions.len());
                println!("REPLICAS    {}", replication_factor(&topic));
                println!();
                let rows: Vec<Vec<String>> = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.index.to_string(),
                            leader(p.leader),
                            p.leader_epoch.to_string(),
                            ids(&p.replicas),
                            ids(&p.isr),
                            ids(&p.offline),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "PARTITION",
                        "LEADER",
                        "EPOCH",
                        "REPLICAS",
                        "IN-SYNC",
                        "OFFLINE",
                    ],
                    &rows,
                );
                println!();
                let rows: Vec<Vec<String>> = configs
                    .iter()
                    .map(|c| {
                        let value = if c.sensitive {
                            "(sensitive)".to_string()
                        } else {
                            c.value.clone().unwrap_or_default()
                        };
                        let source = if c.is_override { "topic" } else { "default" };
                        vec![c.name.clone(), value, source.to_string()]
                    })
                    .collect();
                if rows.is_empty() {
                    println!("no config overrides (--all-configs shows every config)");
                } else {
                    print_table(&["CONFIG", "VALUE", "SOURCE"], &rows);
                }
            }
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            delete,
        } => {
            // Both changes are validated before either is made, so that a
            // refusal (a bad value, fewer partitions than today) changes
            // nothing.
            let set = configs.to_map()?;
            let configs_change = !set.is_empty() || !delete.is_empty();
            for validate_only in [true, false] {
                if configs_change {
                    admin
                        .alter_topic_configs(&name, &set, &delete, validate_only)
                        .await?;
                }
                if let Some(total) = partitions {
                    admin
                        .create_partitions(&name, total, &[], validate_only)
                        .await?;
                }
            }
            if json {
                println!("{}", json!({ "name": name, "altered": true }));
            } else {
                println!("altered topic {name}");
            }
        }
        TopicCommand::Move {
            name,
            partitions,
            replicas,
            cancel,
        } => {
            let target = (!cancel).then_some(replicas);
            let moves: Vec<PartitionMove> = partitions
                .iter()
                .map(|p| PartitionMove {
                    topic: name.clone(),
                    partition: *p,
                    target: target.clone(),
                })
                .collect();
            admin.alter_reassignments(&moves).await?;
            if json {
                println!(
                    "{}",
                    json!({ "name": name, "partitions": partitions, "replicas": target })
                );
            } else if let Some(t) = &target {
                println!("moving {name} partitions {partitions:?} to brokers {t:?}");
            } else {
                println!("cancelled the moves of {name} partitions {partitions:?}");
            }
        }
        TopicCommand::Moves { names } => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let moves = admin
                .list_reassignments((!names.is_empty()).then_some(&names[..]))
                .await?;
            if json {
                let rows: Vec<_> = moves
                    .iter()
                    .map(|m| {
                        json!({
                            "topic": m.topic, "partition": m.partition, "replicas": m.replicas,
                            "adding": m.adding, "removing": m.removing,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                let ids = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
                let rows: Vec<Vec<String>> = moves
                    .iter()
                    .map(|m| {
                        vec![
                            m.topic.clone(),
                            m.partition.to_string(),
                            ids(&m.replicas),
                            ids(&m.adding),
                            ids(&m.removing),
                        ]
                    })
                    .collect();
                super::print_table(
                    &["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"],
                    &rows,
                );
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            if json {
                println!("{}", json!({ "name": name, "deleted": true }));
            } else {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(())
}

/// Runs a `group` command.
pub async fn group(connect: &Connect, cmd: GroupCommand) -> Result<(), CliError> {
    let admin = connect.admin().await?;
    let json = connect.output == Output::Json;
    match cmd {
        GroupCommand::List => {
            let listings = admin.list_groups().await?;
            for (broker, why) in &listings.unanswered {
                eprintln!("warning: broker {broker} did not list its groups: {why}");
            }
            if json {
                let list: Vec<_> = listings
                    .groups
                    .iter()
                    .map(|g| json!({"group": g.group_id, "protocol_type": g.protocol_type, "state": g.state}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                let rows: Vec<Vec<String>> = listings
                    .groups
                    .iter()
                    .map(|g| vec![g.group_id.clone(), g.state.clone(), g.protocol_type.clone()])
                    .collect();
                print_table(&["GROUP", "STATE", "PROTOCOL"], &rows);
            }
            if !listings.unanswered.is_empty() {
                return Err(CliError {
                    status: ExitStatus::Unreachable,
                    error: anyhow!(
                        "the list is incomplete: {} broker(s) did not answer",
                        listings.unanswered.len()
                    ),
                });
            }
        }
        GroupCommand::Describe { group } => {
            let Some(g) = admin.describe_group(&group).await? else {
                return Err(CliError::refused(anyhow!(
                    "group {group} does not exist (no members, no committed offsets)"
                )));
            };
            let member =
                |id: &Option<String>| g.members.iter().find(|m| Some(&m.member_id) == id.as_ref());
            let total_lag: i64 = g.partitions.iter().filter_map(|p| p.lag()).sum();
            let unknown_ends: Vec<String> = g
                .partitions
                .iter()
                .filter(|p| p.log_end.is_none())
                .map(|p| format!("{}-{}", p.topic, p.partition))
                .collect();
            if !unknown_ends.is_empty() {
                eprintln!(
                    "warning: no log end (leader unknown or unreachable) for {}; the total lag leaves them out",
                    unknown_ends.join(", ")
                );
            }
            if json {
                let partitions: Vec<_> = g
                    .partitions
                    .iter()
                    .map(|p| {
                        json!({
                            "topic": p.topic,
                            "partition": p.partition,
                            "committed": p.committed,
                            "log_end": p.log_end,
                            "lag": p.lag(),
                            "member": p.member_id,
                        })
                    })
                    .collect();
                let members: Vec<_> = g
                    .members
                    .iter()
                    .map(|m| {
                        json!({
                            "member": m.member_id,
                            "group_instance_id": m.group_instance_id,
                            "client_id": m.client_id,
                            "host": m.client_host,
                            "assignment": m.assignment.iter().map(|(t, ps)| json!({"topic": t, "partitions": ps})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    json!({
                        "group": g.group_id,
                        "state": g.state,
                        "protocol_type": g.protocol_type,
                        "assignor": g.protocol,
                        "coordinator": g.coordinator,
                        "members": members,
                        "partitions": partitions,
                        "total_lag": total_lag,
                        "total_lag_complete": unknown_ends.is_empty(),
                    })
                );
            } else {
                println!("GROUP        {}", g.group_id);
                println!("STATE        {}", g.state);
                println!(
                    "ASSIGNOR     {}",
                    if g.protocol.is_empty() {
                        "-"
                    } else {
                        &g.protocol
                    }
                );
                println!("COORDINATOR  {}", g.coordinator);
                println!("MEMBERS      {}", g.members.len());
                println!("TOTAL LAG    {total_lag}");
                println!();
                let shown = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
                let rows: Vec<Vec<String>> = g
                    .partitions
                    .iter()
                    .map(|p| {
                        let m = member(&p.member_id);
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            shown(p.committed),
                            shown(p.log_end),
                            shown(p.lag()),
                            m.map(|m| m.member_id.clone()).unwrap_or_else(|| "-".into()),
                            m.map(|m| m.client_id.clone()).unwrap_or_else(|| "-".into()),
                            m.map(|m| m.client_host.clone())
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "TOPIC",
                        "PARTITION",
                        "COMMITTED",
                        "LOG-END",
                        "LAG",
                        "MEMBER",
                        "CLIENT-ID",
                        "HOST",
                    ],
                    &rows,
                );
            }
        }
    }
    Ok(())
}

/// Runs a `cluster` command.
pub async fn cluster(connect: &Connect, cmd: ClusterCommand) -> Result<(), CliError> {
    let admin = connect.admin().await?;
    match cmd {
        ClusterCommand::Status => {
            let view = admin.cluster(None).await?;
            let quorum = match admin.quorum().await {
                Ok(q) => Some(q),
                Err(e) => {
                    eprintln!("warning: the controller quorum could not be described: {e}");
                    None
                }
            };
            let status = Status::of(&view);
            if connect.output == Output::Json {
                println!("{}", status.json(&view, quorum.as_ref()));
            } else {
                status.print(&view, quorum.as_ref());
            }
            if !status.leaderless.is_empty() {
                return Err(CliError::refused(anyhow!(
                    "{} partition(s) without a leader",
                    status.leaderless.len()
                )));
            }
        }
    }
    Ok(())
}

/// What `cluster status` derives from one broker's metadata.
struct Status {
    partitions: usize,
    /// (topic, partition, replicas, in-sync)
    under_replicated: Vec<(String, i32, Vec<i32>, Vec<i32>)>,
    leaderless: Vec<(String, i32)>,
}

impl Status {
    fn of(view: &ClusterView) -> Status {
        let mut status = Status {
            partitions: 0,
            under_replicated: Vec::new(),
            leaderless: Vec::new(),
        };
        for t in &view.topics {
            for p in &t.partitions {
                status.partitions += 1;
                if p.leader < 0 {
                    status.leaderless.push((t.name.clone(), p.index));
                }
                if p.under_replicated() {
                    status.under_replicated.push((
                        t.name.clone(),
                        p.index,
                        p.replicas.clone(),
                        p.isr.clone(),
                    ));
                }
            }
        }
        status
    }

    fn json(&self, view: &ClusterView, quorum: Option<&QuorumView>) -> serde_json::Value {
        let member = |m: &QuorumMember| json!({"id": m.id, "log_end": m.log_end, "last_caught_up_ms": m.last_caught_up_ms});
        json!({
            "quorum": quorum.map(|q| json!({
                "leader": q.leader,
                "epoch": q.epoch,
                "high_watermark": q.high_watermark,
                "voters": q.voters.iter().map(member).collect::<Vec<_>>(),
                "observers": q.observers.iter().map(member).collect::<Vec<_>>(),
            })),
            "cluster_id": view.cluster_id,
            "controller": view.controller_id,
            "brokers": view.brokers.iter().map(|b| json!({
                "id": b.id, "host": b.host, "port": b.port, "rack": b.rack,
            })).collect::<Vec<_>>(),
            "topics": view.topics.len(),
            "partitions": self.partitions,
            "under_replicated": self.under_replicated.iter().map(|(t, p, r, isr)| json!({
                "topic": t, "partition": p, "replicas": r, "isr": isr,
            })).collect::<Vec<_>>(),
            "leaderless": self.leaderless.iter().map(|(t, p)| json!({
                "topic": t, "partition": p,
            })).collect::<Vec<_>>(),
        })
    }

    fn print(&self, view: &ClusterView, quorum: Option<&QuorumView>) {
        println!(
            "CLUSTER     {}",
            view.cluster_id.as_deref().unwrap_or("(none)")
        );
        println!("CONTROLLER  {}", leader(view.controller_id));
        println!(
            "TOPICS      {} ({} partitions, {} under-replicated, {} without a leader)",
            view.topics.len(),
            self.partitions,
            self.under_replicated.len(),
            self.leaderless.len()
        );
        println!();
        let rows: Vec<Vec<String>> = view
            .brokers
            .iter()
            .map(|b| {
                vec![
                    b.id.to_string(),
                    format!("{}:{}", b.host, b.port),
                    b.rack.clone().unwrap_or_default(),
                    if b.id == view.controller_id {
                        "yes"
                    } else {
                        ""
                    }
                    .to_string(),
                ]
            })
            .collect();
        print_table(&["BROKER", "ADDRESS", "RACK", "CONTROLLER"], &rows);
        if let Some(q) = quorum {
            println!();
            println!(
                "QUORUM      leader {}, epoch {}, high watermark {}",
                q.leader, q.epoch, q.high_watermark
            );
            let leader_end = q
                .voters
                .iter()
                .find(|m| m.id == q.leader)
                .map_or(-1, |m| m.log_end);
            let rows: Vec<Vec<String>> = q
                .voters
                .iter()
                .map(|m| ("voter", m))
                .chain(q.observers.iter().map(|m| ("observer", m)))
                .map(|(role, m)| {
                    let behind = if m.log_end < 0 || leader_end < 0 {
                        "unknown".to_string()
                    } else {
                        (leader_end - m.log_end).max(0).to_string()
                    };
                    vec![
                        m.id.to_string(),
                        role.to_string(),
                        m.log_end.to_string(),
                        behind,
                    ]
                })
                .collect();
            print_table(&["MEMBER", "ROLE", "LOG-END", "BEHIND"], &rows);
        }
        if !self.under_replicated.is_empty() || !self.leaderless.is_empty() {
            println!();
            let mut rows: Vec<Vec<String>> = self
                .under_replicated
                .iter()
                .map(|(t, p, r, isr)| {
                    vec![
                        t.clone(),
                        p.to_string(),
                        ids(r),
                        ids(isr),
                        "under-replicated".into(),
                    ]
                })
                .collect();
            rows.extend(self.leaderless.iter().map(|(t, p)| {
                vec![
                    t.clone(),
                    p.to_string(),
                    String::new(),
                    String::new(),
                    "no leader".into(),
                ]
            }));
            print_table(
                &["TOPIC", "PARTITION", "REPLICAS", "IN-SYNC", "PROBLEM"],
                &rows,
            );
        }
    }
}

/// A topic's replication factor: its partitions' largest replica count.
fn replication_factor(t: &TopicView) -> usize {
    t.partitions
        .iter()
        .map(|p| p.replicas.len())
        .max()
        .unwrap_or(0)
}

fn ids(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn leader(id: i32) -> String {
    if id < 0 {
        "none".to_string()
    } else {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_split_at_the_first_equals() {
        assert_eq!(
            key_value("sluice.view.of=a=b"),
            Ok(("sluice.view.of".into(), "a=b".into()))
        );
        assert!(key_value("retention.ms").is_err());
        assert!(key_value("=1").is_err());
    }

    #[test]
    fn plugin_flags_become_binding_configs() {
        let flags = ConfigFlags {
            configs: vec![("retention.ms".into(), "1000".into())],
            partitioner: Some("tenant-router".into()),
            interceptors: vec!["stamp".into(), "redact".into()],
            filters: vec![],
            fetch_filters: vec!["half".into()],
        };
        let map = flags.to_map().map_err(|e| e.error).unwrap_or_default();
        assert_eq!(
            map.get("sluice.partitioner").map(String::as_str),
            Some("tenant-router")
        );
        assert_eq!(
            map.get("sluice.interceptors").map(String::as_str),
            Some("stamp,redact")
        );
        assert_eq!(
            map.get("sluice.fetch.filters").map(String::as_str),
            Some("half")
        );
        assert!(!map.contains_key("sluice.filters"));
        assert_eq!(map.get("retention.ms").map(String::as_str), Some("1000"));
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let flags = ConfigFlags {
            configs: vec![("sluice.partitioner".into(), "a".into())],
            partitioner: Some("b".into()),
            interceptors: vec![],
            filters: vec![],
            fetch_filters: vec![],
        };
        assert!(flags.to_map().is_err());
    }
}
