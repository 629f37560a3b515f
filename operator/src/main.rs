//! `sluice-operator`: `run` runs the controllers; `crd` prints (or writes)
//! the CustomResourceDefinitions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_operator::context::Endpoints;
use sluice_operator::run::{Options, run};

#[derive(Parser)]
#[command(
    name = "sluice-operator",
    version,
    about = "Kubernetes operator for Sluice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Cluster, Topic, Plugin and User controllers.
    Run {
        /// Address of `/metrics` and `/healthz`.
        #[arg(long, env = "SLUICE_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Watch only these namespaces, comma-separated (default: all).
        #[arg(long, env = "SLUICE_OPERATOR_WATCH_NAMESPACES", value_delimiter = ',')]
        watch_namespaces: Vec<String>,
        /// Elect a leader on a Lease in this namespace, so several replicas
        /// can run and only one reconciles (default: the pod's namespace;
        /// leader election is off if neither is set).
        #[arg(long, env = "POD_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Turn leader election off even when a Lease namespace is known.
        #[arg(long, env = "SLUICE_OPERATOR_NO_LEADER_ELECTION")]
        no_leader_election: bool,
        /// This replica's Lease identity.
        #[arg(long, env = "POD_NAME", default_value = "sluice-operator")]
        identity: String,
        /// Reach every Cluster's brokers at this Kafka address instead of
        /// its bootstrap Service (an operator outside the cluster).
        #[arg(long, requires = "admin_url")]
        kafka_bootstrap: Option<String>,
        /// Admin API base URLs, broker 0 first, with --kafka-bootstrap.
        #[arg(long, value_delimiter = ',')]
        admin_url: Vec<String>,
        /// Server-side-apply the CRDs at start, so upgrading the operator
        /// upgrades them (the Helm chart turns this on).
        #[arg(long, env = "SLUICE_OPERATOR_INSTALL_CRDS")]
        install_crds: bool,
        /// Seconds between looks at a converged object (broker-side drift
        /// raises no Kubernetes event).
        #[arg(long, env = "SLUICE_OPERATOR_RESYNC_SECONDS", default_value_t = 60)]
        resync_seconds: u64,
    },
    /// Remove the operator's finalizers from every Topic, Plugin and User (the
    /// chart runs this before `helm uninstall` removes the operator).
    ReleaseFinalizers {
        /// Only these namespaces, comma-separated (default: all).
        #[arg(long, env = "SLUICE_OPERATOR_WATCH_NAMESPACES", value_delimiter = ',')]
        watch_namespaces: Vec<String>,
    },
    /// Print the CRDs as YAML (or write one file per CRD into --out).
    Crd {
        /// Directory to write `<crd name>.yaml` files into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            listen,
            watch_namespaces,
            lease_namespace,
            no_leader_election,
            identity,
            kafka_bootstrap,
            admin_url,
            resync_seconds,
            install_crds,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let endpoints = match kafka_bootstrap {
                Some(kafka) => Endpoints::Fixed {
                    kafka,
                    admin: admin_url,
                },
                None => Endpoints::ServiceDns,
            };
            let opts = Options {
                listen,
                namespaces: watch_namespaces,
                lease_namespace: lease_namespace.filter(|_| !no_leader_election),
                identity,
                endpoints,
                resync: Duration::from_secs(resync_seconds.max(1)),
                install_crds,
            };
            tokio::runtime::Runtime::new()?.block_on(run(opts))?;
        }
        Command::ReleaseFinalizers { watch_namespaces } => {
            let released = tokio::runtime::Runtime::new()?.block_on(async {
                let client = kube::Client::try_default().await?;
                sluice_operator::run::release_finalizers(&client, &watch_namespaces).await
            })?;
            println!("released {released} finalizers");
        }
        Command::Crd { out: None } => {
            for (_, yaml) in sluice_operator::crd::crd_files()? {
                print!("---\n{yaml}");
            }
        }
        Command::Crd { out: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, yaml) in sluice_operator::crd::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
