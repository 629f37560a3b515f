//! `sluice-broker`: runs the broker (`serve`).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sluice_broker::broker::Broker;
use sluice_broker::cli::kafka::{ClusterCommand, Connect, GroupCommand, TopicCommand};
use sluice_broker::cli::{self, CliError, PluginCommand};
use sluice_broker::config::{self, ServeArgs};
use sluice_broker::connections::{ConnectionLimits, Connections};
use sluice_broker::{admin, listeners, liveness, maintenance, replication, server};
use sluice_metadata::controller::{self, Registration};
use sluice_metadata::image::Endpoint;
use sluice_metadata::quorum::{self, Quorum, QuorumConfig};
use sluice_metadata::topic_config::META_DIR;
use tokio::net::TcpListener;

/// mimalloc instead of glibc malloc: the data path allocates and frees
/// megabyte-sized buffers and thousands of small ones per request, and
/// glibc keeps returning that memory to the kernel (heap trimming, mmap
/// thresholds) only to page-fault it back in on the next request; profiles
/// showed page faults as the largest single cost of plugin calls and fetches.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice-broker",
    version,
    about = "Kafka-compatible broker with WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker. With no flags: single node, 127.0.0.1:9092, data in ./sluice-data.
    Serve(Box<ServeArgs>),
    /// Manage WebAssembly plugins on a running broker (via its admin API).
    Plugin {
        /// The broker's admin address.
        #[arg(
            long,
            env = "SLUICE_ADMIN",
            default_value = "127.0.0.1:9644",
            global = true
        )]
        admin: String,
        /// Bearer token for an admin API that requires one
        /// (`--admin-auth-tokens-file` on the broker).
        #[arg(
            long,
            env = "SLUICE_ADMIN_TOKEN",
            global = true,
            hide_env_values = true
        )]
        token: Option<String>,
        /// CA certificates (PEM) of an admin API served over TLS
        /// (`--admin-tls` on the broker): connect with TLS, checking the
        /// broker's certificate against them.
        #[arg(long, env = "SLUICE_ADMIN_CA", global = true)]
        ca: Option<std::path::PathBuf>,
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Create, list, describe, alter and delete topics (over a Kafka listener).
    Topic {
        #[command(flatten)]
        connect: Connect,
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// List consumer groups; describe one with its lag (over a Kafka listener).
    Group {
        #[command(flatten)]
        connect: Connect,
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// The cluster's brokers, controller and partition health (over a Kafka listener).
    Cluster {
        #[command(flatten)]
        connect: Connect,
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    // The broker logs at info; the CLI's commands only warn, so that their
    // output is what they print.
    let default_filter = match cli.command {
        // openraft logs every failed heartbeat to a stopped peer at ERROR;
        // the broker reports controller changes itself.
        Command::Serve(_) => "info,openraft=off",
        // What the plugin under test logs is what its author looks for.
        Command::Plugin {
            command: PluginCommand::Test(_),
            ..
        } => "warn,sluice_plugin_host::host=debug",
        _ => "warn,openraft=off",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    match cli.command {
        Command::Plugin {
            admin,
            token,
            ca,
            command,
        } => {
            run_cli(
                || async move { cli::plugin::run(&admin, token.as_deref(), ca.as_deref(), command) },
            )
        }
        Command::Topic { connect, command } => {
            run_cli(|| async move { cli::kafka::topic(&connect, command).await })
        }
        Command::Group { connect, command } => {
            run_cli(|| async move { cli::kafka::group(&connect, command).await })
        }
        Command::Cluster { connect, command } => {
            run_cli(|| async move { cli::kafka::cluster(&connect, command).await })
        }
        Command::Serve(_) => {
            let sub = matches
                .subcommand_matches("serve")
                .context("serve arguments missing")?;
            let args = config::resolve(sub)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(args))
        }
    }
}

/// Runs a CLI command on a small runtime; on failure prints the error and
/// exits with its status (1: refused, 3: unreachable, 4: no answer in time).
fn run_cli<F, Fut>(command: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(command()) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            std::process::exit(e.status as i32)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let specs = listeners::from_args(&args)?;
    let mut bound = Vec::new();
    for spec in &specs {
        let socket = TcpListener::bind(&spec.bind)
            .await
            .with_context(|| format!("binding listener {} ({})", spec.name, spec.bind))?;
        let tls = listeners::server_tls(&args, spec)?;
        bound.push((spec, socket.local_addr()?, socket, tls));
    }
    let peer_transport = listeners::peer_transport(&args, &specs)?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding admin listener {}", args.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    // The admin port answers /healthz and /readyz from the start, saying
    // what a starting broker waits for; the full API follows once it is
    // open (same socket, two handles).
    let admin_socket = admin_listener.into_std()?;
    let starting_admin = TcpListener::from_std(admin_socket.try_clone()?)?;
    let admin_listener = TcpListener::from_std(admin_socket)?;
    let phase: admin::StartupPhase =
        Arc::new(std::sync::Mutex::new("opening the controller quorum"));
    let (opened, opened_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_tls = listeners::admin_tls(&args)?;
    let starting = tokio::spawn(admin::serve_starting(
        starting_admin,
        admin_tls.clone(),
        phase.clone(),
        async move {
            let _ = opened_rx.await;
        },
    ));
    tokio::spawn(maintenance::disk_probe(args.data_dir.clone()));
    // What clients on each listener are told: its advertised address, else
    // the bound one (port 0 advertised: the bound port); a listener bound
    // to every interface advertises this host's name, as Kafka does, not
    // the unroutable 0.0.0.0.
    let advertised: BTreeMap<String, Endpoint> = bound
        .iter()
        .map(|(spec, addr, _, _)| {
            let (host, port) = match &spec.advertised {
                Some((h, p)) => (h.clone(), if *p == 0 { addr.port() } else { *p }),
                None if addr.ip().is_unspecified() => {
                    let host = sluice_broker::config::host_name()
                        .map(|h| h.trim().to_string())
                        .filter(|h| !h.is_empty())
                        .with_context(|| {
                            format!(
                                "listener {} is bound to every interface and this host has no name to advertise: set advertised-listeners",
                                spec.name
                            )
                        })?;
                    (host, addr.port())
                }
                None => (addr.ip().to_string(), addr.port()),
            };
            let port = i32::from(port);
            Ok((spec.name.clone(), Endpoint { host, port }))
        })
        .collect::<anyhow::Result<_>>()?;
    let inter_broker = specs
        .iter()
        .find(|s| s.inter_broker)
        .and_then(|s| advertised.get(&s.name))
        .context("no inter-broker listener")?
        .clone();
    let data_dir = args.data_dir.clone();
    let registration = Registration {
        node_id: args.node_id,
        host: inter_broker.host,
        port: inter_broker.port,
        incarnation: uuid::Uuid::new_v4(),
        // One listener registers as before (its address alone), so a
        // rolling upgrade's older brokers read the same command.
        listeners: if specs.len() > 1 {
            advertised
        } else {
            BTreeMap::new()
        },
    };
    let mut voters = quorum::parse_peers(&args.peers)?;
    let own_addr = voters
        .entry(args.node_id)
        .or_insert_with(|| format!("{}:{}", registration.host, registration.port))
        .clone();
    let quorum = Arc::new(
        Quorum::start(QuorumConfig {
            node_id: args.node_id,
            voters,
            dir: args.data_dir.join(META_DIR).join("quorum"),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(args.controller_election_timeout_ms),
            snapshot_every: quorum::SNAPSHOT_EVERY,
            transport: peer_transport,
        })
        .await?,
    );
    let connections = Connections::new(ConnectionLimits {
        max_connections: args.max_connections,
        max_per_ip: args.max_connections_per_ip,
        idle_timeout: Duration::from_millis(args.connections_max_idle_ms),
    })?;
    let listener = Arc::new(server::Listener {
        quorum: quorum.clone(),
        broker: OnceLock::new(),
        max_request_bytes: args.max_request_bytes,
        connections: connections.clone(),
        draining: tokio::sync::watch::Sender::new(false),
    });
    let several = bound.len() > 1;
    let mut first = None;
    let mut named = String::new();
    for (spec, addr, socket, tls) in bound {
        let endpoint = Arc::new(server::ListenerContext {
            name: spec.name.as_str().into(),
            inter_broker: spec.inter_broker,
            tls,
            sasl: spec.protocol.uses_sasl(),
            peer_principals: listeners::inter_broker_principals(&args, spec)?,
        });
        // The first listener is `kafka=` (scripts read it); with several,
        // each is also listed by name at the end.
        first.get_or_insert(addr);
        if several {
            named.push_str(&format!(" listener.{}={addr}", spec.name));
        }
        tracing::info!(listener = %spec.name, %addr, protocol = ?spec.protocol, inter_broker = spec.inter_broker, "listening");
        tokio::spawn(server::serve(listener.clone(), socket, endpoint));
    }
    let heartbeat = Duration::from_millis(args.broker_heartbeat_interval_ms);
    let session = Duration::from_millis(args.broker_session_timeout_ms);
    *phase.lock().unwrap_or_else(|e| e.into_inner()) =
        "joining the cluster (registering with the controller quorum, opening partitions)";
    if quorum.is_joining() {
        // Reached at the address this broker gave itself in `--peers` (or
        // its inter-broker listener's).
        let addr = own_addr.clone();
        let q = quorum.clone();
        tokio::spawn(async move { q.join(addr).await });
    }
    let broker = Arc::new(Broker::open(args, quorum.clone(), registration.clone()).await?);
    for c in connections.metrics.collectors() {
        broker.metrics.register(c);
    }
    let _ = listener.broker.set(broker.clone());
    tokio::spawn(controller::heartbeat_loop(
        quorum.clone(),
        registration,
        heartbeat,
    ));
    tokio::spawn(liveness::watch_quorum_contact(broker.clone(), session));
    tokio::spawn(controller::fence_loop(quorum.clone(), session, heartbeat));
    tokio::spawn(controller::membership_loop(quorum.clone()));
    tokio::spawn(controller::controller_watch(quorum.clone()));
    tokio::spawn(maintenance::metadata_sync(broker.clone()));
    let views = broker.views.clone();
    tokio::spawn(replication::isr_loop(broker.replicas.clone(), move || {
        views.current().leaders.clone()
    }));
    tokio::spawn(
        broker
            .transactions
            .clone()
            .abort_timed_out(Duration::from_millis(
                broker
                    .args
                    .transaction_abort_timed_out_transaction_cleanup_interval_ms,
            )),
    );
    tokio::spawn(
        broker
            .transactions
            .clone()
            .expire_idle_ids(Duration::from_millis(
                broker
                    .args
                    .transaction_remove_expired_transaction_cleanup_interval_ms,
            )),
    );
    if broker.args.auto_leader_rebalance_enable {
        tokio::spawn(controller::preferred_leader_loop(
            quorum.clone(),
            Duration::from_millis(broker.args.leader_imbalance_check_interval_ms),
        ));
    }
    let _ = opened.send(());
    if let Ok(Err(e)) = starting.await {
        tracing::warn!(error = %e, "startup admin server stopped");
    }
    tokio::spawn(admin_serve(broker.clone(), admin_listener, admin_tls));
    tokio::spawn(maintenance::flusher(broker.clone()));
    tokio::spawn(maintenance::retention(broker.clone()));
    tokio::spawn(maintenance::scrubber(broker.clone()));
    tokio::spawn(maintenance::group_timers(broker.clone()));
    tokio::spawn(sluice_broker::lag::refresh_loop(broker.clone()));
    let stop = shutdown_signal();
    broker.ready.store(true, Ordering::Release);
    tracing::info!(admin = %admin_addr, data_dir = %data_dir.display(), node_id = broker.node_id, "broker started");
    {
        let mut out = std::io::stdout().lock();
        let kafka = first.context("no listener")?;
        writeln!(
            out,
            "sluice-broker ready kafka={kafka} admin={admin_addr}{named}"
        )?;
        out.flush()?;
    }
    stop.await;
    tracing::info!("shutting down");
    broker.ready.store(false, Ordering::Release);
    let shutdown_timeout = Duration::from_millis(broker.args.controlled_shutdown_timeout_ms);
    let started = std::time::Instant::now();
    if broker.args.controlled_shutdown_enable {
        liveness::controlled_shutdown(&broker, shutdown_timeout).await;
    }
    // Requests in progress are answered (acks=all waits here have failed
    // over to NOT_LEADER_OR_FOLLOWER), then the connections close.
    listener.drain();
    let deadline = started + shutdown_timeout;
    while connections.metrics.active.get() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        open_connections = connections.metrics.active.get(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "connections closed; flushing logs"
    );
    for t in broker.topics.materialized().values() {
        for p in t.local_partitions() {
            if let Err(e) = p.close() {
                tracing::error!(partition = %p.name(), error = %e, "flush on shutdown failed");
            }
        }
    }
    quorum.shutdown().await;
    Ok(())
}

async fn admin_serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<listeners::ServerTls>,
) {
    if let Err(e) = admin::serve(broker, listener, tls).await {
        tracing::error!(error = %e, "admin server stopped");
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, so call it before announcing readiness: a SIGTERM right after the
/// ready line must still take the clean-shutdown path.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
