//! Multi-broker clusters of real `sluice-broker` processes on one machine.
//!
//! Members need each other's addresses up front (`--peers`), so the harness
//! reserves free ports (bind port 0, read it, release) and gives each member
//! a fixed `--listen` address it keeps across restarts. The admin port stays
//! ephemeral. All members are launched before any is awaited: a member
//! only announces readiness once a quorum of the cluster runs.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::metadata::Metadata;
use tempfile::TempDir;

use crate::{Broker, OP_TIMEOUT, admin_client};

/// Timings short enough for tests: a silent broker is fenced after 1.5 s.
pub const FAST_FAILOVER: &[&str] = &[
    "--broker-session-timeout-ms",
    "1500",
    "--broker-heartbeat-interval-ms",
    "250",
    "--controller-election-timeout-ms",
    "500",
];

pub struct Cluster {
    pub brokers: Vec<Broker>,
    /// Client addresses (the CLIENT listener's where listeners are split).
    addrs: Vec<String>,
    /// The inter-broker listener's addresses (`--peers`).
    internal_addrs: Vec<String>,
    /// The members' arguments besides their own (for `add_broker`);
    /// `None` for clusters with split listeners.
    shared_args: Option<Vec<String>>,
    dir: TempDir,
}

/// Security protocols of a cluster whose clients and brokers use separate
/// listeners: CLIENT, and INTERNAL for the brokers' own traffic.
#[derive(Clone, Copy)]
pub struct SplitListeners {
    pub client: &'static str,
    pub internal: &'static str,
}

fn reserve_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("reserving ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// `--peers` for members at `addrs` (ids are their positions).
fn peers_arg(addrs: &[String]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{i}@{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Launches every member, then waits for each: none is ready before a
/// quorum of them runs.
fn launch_all(brokers: &mut [Broker]) -> Result<()> {
    let mut pending = brokers
        .iter_mut()
        .map(|b| b.launch().map(Some))
        .collect::<Result<Vec<_>>>()?;
    for i in 0..brokers.len() {
        let launch = pending[i].take().context("broker launched")?;
        if let Err(e) = brokers[i].await_ready(launch) {
            // A member waits for all to register before it is ready, so
            // the one that exited on its own (a port taken meanwhile by
            // another test's process, say) is what explains the failure.
            let mut why = format!("broker {i}: {e:#}");
            for (j, rest) in pending.iter_mut().enumerate().skip(i + 1) {
                if let Some(mut launch) = rest.take() {
                    if let Ok(Some(status)) = launch.child.try_wait() {
                        why.push_str(&format!(
                            "\n---- broker {j} had exited with {status} ----\n{}",
                            brokers[j].log_excerpt()
                        ));
                    }
                    let _ = launch.child.kill();
                    let _ = launch.child.wait();
                }
            }
            bail!(why);
        }
    }
    Ok(())
}

/// Whether a failed cluster start was a member losing its reserved port
/// (ports are reserved by binding port 0 and released for the broker to
/// bind; a parallel test can take one in between).
fn lost_a_port(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("Address already in use") || text.contains("AddrInUse")
}

impl Cluster {
    /// Starts `n` brokers with ids `0..n` and waits until all are ready.
    pub fn start(n: usize, extra_args: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir()
            .context("cluster temp dir")?;
        Self::start_with_dir(dir, n, extra_args)
    }

    /// Like `start`, with the data dirs under `parent` (a benchmark wants
    /// the disk it measures, not the system temp dir).
    pub fn start_in(parent: &std::path::Path, n: usize, extra_args: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir_in(parent)
            .context("cluster data dir")?;
        Self::start_with_dir(dir, n, extra_args)
    }

    fn start_with_dir(dir: TempDir, n: usize, extra_args: &[&str]) -> Result<Cluster> {
        Self::start_members(dir, n, None, extra_args)
    }

    /// Starts `n` brokers with a CLIENT listener for clients and an
    /// INTERNAL one, the inter-broker listener, for their own traffic
    /// (`--peers` names INTERNAL addresses).
    pub fn start_split(n: usize, split: SplitListeners, extra_args: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir()
            .context("cluster temp dir")?;
        Self::start_members(dir, n, Some(split), extra_args)
    }

    fn start_members(
        dir: TempDir,
        n: usize,
        split: Option<SplitListeners>,
        extra_args: &[&str],
    ) -> Result<Cluster> {
        let mut attempt = 1;
        loop {
            match Self::try_start_members(dir.path(), n, split, extra_args) {
                Ok((brokers, addrs, internal_addrs)) => {
                    return Ok(Cluster {
                        brokers,
                        addrs,
                        internal_addrs,
                        shared_args: split
                            .is_none()
                            .then(|| extra_args.iter().map(|a| a.to_string()).collect()),
                        dir,
                    });
                }
                Err(e) if attempt < 3 && lost_a_port(&e) => {
                    eprintln!(
                        "cluster start: a member lost its port, starting again on new ones: {e:#}"
                    );
                    for i in 0..n {
                        let _ = std::fs::remove_dir_all(dir.path().join(format!("broker-{i}")));
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of `start_members`: the brokers, their addresses and
    /// their inter-broker addresses.
    #[allow(clippy::type_complexity, reason = "a private step of start_members")]
    fn try_start_members(
        dir: &std::path::Path,
        n: usize,
        split: Option<SplitListeners>,
        extra_args: &[&str],
    ) -> Result<(Vec<Broker>, Vec<String>, Vec<String>)> {
        let ports = reserve_ports(if split.is_some() { 2 * n } else { n })?;
        let addr = |p: &u16| format!("127.0.0.1:{p}");
        let addrs: Vec<String> = ports[..n].iter().map(addr).collect();
        let internal_addrs: Vec<String> = match split {
            Some(_) => ports[n..].iter().map(addr).collect(),
            None => addrs.clone(),
        };
        let peers = peers_arg(&internal_addrs);
        let protocols = split.map(|s| format!("CLIENT:{},INTERNAL:{}", s.client, s.internal));
        let mut brokers = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i.to_string();
            let mut args = vec!["--node-id", &id, "--peers", &peers];
            let listeners = format!("CLIENT://{addr},INTERNAL://{}", internal_addrs[i]);
            if let Some(protocols) = &protocols {
                args.extend_from_slice(&[
                    "--listeners",
                    &listeners,
                    "--listener-security-protocol-map",
                    protocols,
                    "--inter-broker-listener-name",
                    "INTERNAL",
                ]);
            }
            args.extend_from_slice(extra_args);
            brokers.push(Broker::new_member(
                &dir.join(format!("broker-{i}")),
                addr,
                &args,
            )?);
        }
        launch_all(&mut brokers)?;
        Ok((brokers, addrs, internal_addrs))
    }

    /// Starts one more broker, id `brokers.len()`, on an empty data dir the
    /// way a scaled-up StatefulSet's new pod starts: `--peers` names every
    /// member and itself, and it joins the running quorum. Returns its id.
    pub fn add_broker(&mut self) -> Result<usize> {
        let shared = self
            .shared_args
            .clone()
            .context("add_broker is for clusters with one listener")?;
        let id = self.brokers.len();
        let mut last = None;
        for _ in 0..3 {
            let addr = format!("127.0.0.1:{}", reserve_ports(1)?[0]);
            let mut addrs = self.internal_addrs.clone();
            addrs.push(addr.clone());
            let peers = peers_arg(&addrs);
            let node = id.to_string();
            let mut args = vec!["--node-id", node.as_str(), "--peers", peers.as_str()];
            args.extend(shared.iter().map(String::as_str));
            let data = self.dir.path().join(format!("broker-{id}"));
            let mut broker = Broker::new_member(&data, &addr, &args)?;
            let launch = broker.launch()?;
            match broker.await_ready(launch) {
                Ok(()) => {
                    self.brokers.push(broker);
                    self.addrs.push(addr.clone());
                    self.internal_addrs.push(addr);
                    return Ok(id);
                }
                Err(e) if lost_a_port(&e) => {
                    let _ = std::fs::remove_dir_all(&data);
                    last = Some(e);
                }
                Err(e) => return Err(e.context(format!("adding broker {id}"))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no port")))
    }

    /// Every member's inter-broker listener address (for clients that may
    /// use it, e.g. a plaintext comparison).
    pub fn internal_bootstrap(&self) -> String {
        self.internal_addrs.join(",")
    }

    /// The inter-broker listener's address of broker `id`.
    pub fn internal_addr(&self, id: usize) -> &str {
        &self.internal_addrs[id]
    }

    /// Every member's Kafka address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addrs.join(",")
    }

    /// The Kafka address of broker `id`.
    pub fn addr(&self, id: usize) -> &str {
        &self.addrs[id]
    }

    /// SIGKILLs broker `id`.
    pub fn kill(&mut self, id: usize) {
        self.brokers[id].kill();
    }

    /// Starts broker `id` again on its data dir and address.
    pub fn restart(&mut self, id: usize) -> Result<()> {
        self.brokers[id].restart()
    }

    /// SIGTERMs broker `id` (controlled shutdown) and waits for it to exit;
    /// returns how long it took.
    pub fn terminate(&mut self, id: usize) -> Result<Duration> {
        self.brokers[id].terminate(Duration::from_secs(40))
    }

    /// Starts a stopped broker `id` again.
    pub fn start_again(&mut self, id: usize) -> Result<()> {
        self.brokers[id].restart()
    }

    /// Metadata for `topic` as broker `via` sees it.
    pub fn metadata(&self, via: usize, topic: Option<&str>) -> Result<Metadata> {
        let admin = admin_client(self.addr(via))?;
        admin
            .inner()
            .fetch_metadata(topic, OP_TIMEOUT)
            .with_context(|| format!("metadata from broker {via}"))
    }

    /// (leader, ISR) of partition `p` of `topic` as broker `via` sees it.
    pub fn leader_and_isr(&self, via: usize, topic: &str, p: i32) -> Result<(i32, Vec<i32>)> {
        let md = self.metadata(via, Some(topic))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .with_context(|| format!("{topic} missing from metadata"))?;
        let part = t
            .partitions()
            .iter()
            .find(|x| x.id() == p)
            .with_context(|| format!("{topic}-{p} missing from metadata"))?;
        Ok((part.leader(), part.isr().to_vec()))
    }

    /// A `sluice_cluster{value=...}` gauge from broker `id`'s /metrics.
    pub fn cluster_gauge(&self, id: usize, value: &str) -> Result<i64> {
        Ok(self.metric(id, &format!("sluice_cluster{{value=\"{value}\"}}"))? as i64)
    }

    /// One series (`name{labels}` exactly as exposed) from broker `id`'s /metrics.
    pub fn metric(&self, id: usize, series: &str) -> Result<f64> {
        self.brokers[id].metric(series)
    }

    /// The controller's id as broker `via` knows it.
    pub fn controller(&self, via: usize) -> Result<i32> {
        Ok(self.cluster_gauge(via, "controller_id")? as i32)
    }

    /// Uploads a plugin through broker 0's admin API and waits until every
    /// broker has installed it (the registry is cluster metadata).
    /// Base URL of broker `id`'s admin API.
    pub fn admin_url(&self, id: usize) -> String {
        self.brokers[id].admin_url()
    }

    pub fn upload_plugin(&self, name: &str, kind: &str, module: &[u8]) -> Result<()> {
        let r = crate::http_post(
            self.brokers[0].admin_addr(),
            &format!("/v1/plugins/{name}?kind={kind}"),
            module,
        )?;
        anyhow::ensure!(r.status == 201, "upload {name}: {} {}", r.status, r.body);
        self.wait_until("every broker installs it", Duration::from_secs(10), |c| {
            Ok(c.brokers.iter().all(|b| {
                crate::http_get(b.admin_addr(), &format!("/v1/plugins/{name}"))
                    .is_ok_and(|r| r.status == 200)
            }))
        })
    }

    /// Polls `check` until it returns `Ok(true)` or `timeout` passes.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Cluster) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => last = "condition false".into(),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {timeout:?} (last: {last})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A cluster whose inter-broker links can be cut: broker `i` reaches
/// broker `j` only through its own proxy `(i, j)` (its `--peers` name the
/// proxies), while clients reach every broker directly. Cutting all links
/// of one broker is a network partition that clients do not see.
pub struct PartitionableCluster {
    pub cluster: Cluster,
    links: Vec<((usize, usize), crate::proxy::FaultProxy)>,
}

impl PartitionableCluster {
    pub fn start(n: usize, extra_args: &[&str]) -> Result<PartitionableCluster> {
        use crate::proxy::{FaultConfig, FaultProxy};
        let dir = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir()
            .context("cluster temp dir")?;
        let addrs: Vec<String> = reserve_ports(n)?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut links = Vec::new();
        for i in 0..n {
            for j in (0..n).filter(|j| *j != i) {
                let proxy = FaultProxy::start(FaultConfig::none())?;
                proxy.set_target(addrs[j].parse().context("address")?);
                links.push(((i, j), proxy));
            }
        }
        let mut brokers = Vec::new();
        for (i, own) in addrs.iter().enumerate() {
            let peers = (0..n)
                .map(|j| {
                    let addr = links
                        .iter()
                        .find(|(l, _)| *l == (i, j))
                        .map_or(own.clone(), |(_, p)| p.bootstrap());
                    format!("{j}@{addr}")
                })
                .collect::<Vec<_>>()
                .join(",");
            let id = i.to_string();
            let mut args = vec!["--node-id", &id, "--peers", &peers];
            args.extend_from_slice(extra_args);
            brokers.push(Broker::new_member(
                &dir.path().join(format!("broker-{i}")),
                own,
                &args,
            )?);
        }
        launch_all(&mut brokers)?;
        Ok(PartitionableCluster {
            cluster: Cluster {
                brokers,
                internal_addrs: addrs.clone(),
                addrs,
                // Proxied or namespaced addresses: add_broker cannot
                // build a member's the same way.
                shared_args: None,
                dir,
            },
            links,
        })
    }

    /// Cuts (or heals) every link to and from broker `id`.
    pub fn isolate(&self, id: usize, isolated: bool) {
        for ((from, to), proxy) in &self.links {
            if *from == id || *to == id {
                proxy.set_isolated(isolated);
            }
        }
    }
}

/// What a test runs against: one broker, or a three-broker cluster (the
/// shape users deploy).
pub enum Target {
    One(Box<Broker>),
    Three(Cluster),
}

/// Partitions of `__consumer_offsets` (the broker's default).
const OFFSETS_PARTITIONS: i32 = 16;

impl Target {
    pub fn one(args: &[&str]) -> Result<Target> {
        Ok(Target::One(Box::new(Broker::start_with_args(args)?)))
    }

    pub fn three(args: &[&str]) -> Result<Target> {
        Ok(Target::Three(Cluster::start(3, args)?))
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Target::One(b) => b.bootstrap(),
            Target::Three(c) => c.bootstrap(),
        }
    }

    /// SIGKILLs the broker coordinating `group` (the leader of its offsets
    /// partition, found as Kafka maps groups to partitions) and starts it
    /// again.
    pub fn kill_and_restart_coordinator(&mut self, group: &str) -> Result<()> {
        match self {
            Target::One(b) => {
                b.kill();
                b.restart()
            }
            Target::Three(c) => {
                let p = internal_partition(group, OFFSETS_PARTITIONS);
                let leader = c.leader_and_isr(0, "__consumer_offsets", p)?.0;
                let id = usize::try_from(leader).context("offsets partition has no leader")?;
                c.kill(id);
                c.restart(id)
            }
        }
    }
}

/// The partition of an internal topic with `partitions` partitions that
/// holds `id` (a group or transactional id), as Kafka maps them.
fn internal_partition(id: &str, partitions: i32) -> i32 {
    let hash = id
        .encode_utf16()
        .fold(0i32, |h, x| h.wrapping_mul(31).wrapping_add(i32::from(x)));
    (hash.unsigned_abs() % partitions as u32) as i32
}

/// Partitions of `__transaction_state` (the broker's default).
const TRANSACTION_PARTITIONS: i32 = 16;

impl Cluster {
    /// The broker coordinating `transactional_id`: the leader of its
    /// transaction state partition.
    pub fn transaction_coordinator(&self, transactional_id: &str) -> Result<i32> {
        let p = internal_partition(transactional_id, TRANSACTION_PARTITIONS);
        let leader = self.leader_and_isr(0, "__transaction_state", p)?.0;
        anyhow::ensure!(leader >= 0, "transaction state partition {p} has no leader");
        Ok(leader)
    }
}

/// A cluster whose brokers each live in their own network namespace, all
/// on one bridge (in a namespace of its own) that the test process reaches
/// through one veth, so a test can cut a broker off from the others
/// (blackhole routes inside the namespaces) while clients still reach
/// every broker: a real network partition, not a proxy. Needs root and
/// iproute2; `start` returns the reason when namespaces cannot be made,
/// for the test to print and skip. Everything is removed on drop.
pub struct NetnsCluster {
    pub cluster: Cluster,
    net: Netns,
}

struct Netns {
    tag: String,
    prefix: String,
    brokers: usize,
}

fn ip(args: &[&str]) -> std::result::Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Namespaces `<tag>-hub` (the bridge) and `<tag>-b<i>`, broker `i` at
    /// `<prefix>.<2+i>/24`, the test process at `<prefix>.1`.
    fn create(n: usize) -> std::result::Result<Netns, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let unique = std::process::id() % 1000 * 10
            + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let net = Netns {
            tag: format!("sl{unique}"),
            prefix: format!("10.251.{}", unique % 250),
            brokers: n,
        };
        // On failure `net` is dropped here, removing what was made.
        net.build()?;
        Ok(net)
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-b{i}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 2 + i)
    }

    fn build(&self) -> std::result::Result<(), String> {
        let (tag, hub) = (&self.tag, self.hub());
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let attach = |outer: &str| -> std::result::Result<(), String> {
            ip(&["link", "set", outer, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", outer, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", outer, "up"])
        };
        for i in 0..self.brokers {
            let ns = self.ns(i);
            let (inner, outer) = (format!("{tag}b{i}"), format!("{tag}p{i}"));
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            attach(&outer)?;
            let cidr = format!("{}/24", self.addr(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        }
        let (host, outer) = (format!("{tag}h"), format!("{tag}g"));
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &outer])?;
        attach(&outer)?;
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", self.prefix),
            "dev",
            &host,
        ])?;
        ip(&["link", "set", &host, "up"])?;
        Ok(())
    }

    /// Cuts (or heals) broker `id` off from the other brokers, in both
    /// directions; the test process still reaches it.
    fn isolate(&self, id: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        for j in (0..self.brokers).filter(|j| *j != id) {
            for (from, to) in [(id, j), (j, id)] {
                let dst = format!("{}/32", self.addr(to));
                if let Err(e) = ip(&["-n", &self.ns(from), "route", verb, "blackhole", &dst]) {
                    eprintln!("{e}");
                }
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and so their
        // peers; the host end is deleted explicitly in case it was not
        // attached yet.
        let _ = ip(&["link", "del", &format!("{}h", self.tag)]);
        for i in 0..self.brokers {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

impl NetnsCluster {
    /// Starts `n` brokers, each in its own namespace; `Err` with the reason
    /// when namespaces cannot be created here.
    pub fn start(
        n: usize,
        extra_args: &[&str],
    ) -> std::result::Result<Result<NetnsCluster>, String> {
        let net = Netns::create(n)?;
        Ok(Self::start_on(net, n, extra_args))
    }

    fn start_on(net: Netns, n: usize, extra_args: &[&str]) -> Result<NetnsCluster> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-netns-cluster-")
            .tempdir()
            .context("cluster temp dir")?;
        let addrs: Vec<String> = (0..n).map(|i| format!("{}:9092", net.addr(i))).collect();
        let peers = peers_arg(&addrs);
        let mut brokers = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i.to_string();
            let admin = format!("{}:9644", net.addr(i));
            let mut args = vec![
                "--node-id",
                &id,
                "--peers",
                &peers,
                "--admin-listen",
                &admin,
            ];
            args.extend_from_slice(extra_args);
            let mut b = Broker::new_member(&dir.path().join(format!("broker-{i}")), addr, &args)?;
            b.set_netns(&net.ns(i));
            brokers.push(b);
        }
        launch_all(&mut brokers)?;
        Ok(NetnsCluster {
            cluster: Cluster {
                brokers,
                internal_addrs: addrs.clone(),
                addrs,
                // Proxied or namespaced addresses: add_broker cannot
                // build a member's the same way.
                shared_args: None,
                dir,
            },
            net,
        })
    }

    /// Cuts (or heals) every link between broker `id` and the others.
    pub fn isolate(&self, id: usize, isolated: bool) {
        self.net.isolate(id, isolated);
    }
}
