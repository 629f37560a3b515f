"""Helpers shared by the client-compatibility tests: broker process control,
admin HTTP access and small client wrappers with bounded waits."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BROKER_BIN = REPO_ROOT / "target" / "debug" / "sluice-broker"

READY_RE = re.compile(
    r"^sluice-broker ready kafka=(?P<kafka>\S+:\d+) admin=(?P<admin>\S+:\d+)(?: listener\.\S+=\S+)*\s*$"
)

# How long a broker may take to print its ready line.
STARTUP_TIMEOUT_S = float(os.environ.get("SLUICE_STARTUP_TIMEOUT", "30"))


class BrokerError(RuntimeError):
    pass


def broker_binary() -> Path:
    """Resolve the broker binary, or raise BrokerError with a clear hint."""
    override = os.environ.get("SLUICE_BROKER_BIN")
    path = Path(override) if override else DEFAULT_BROKER_BIN
    if not path.is_file() or not os.access(path, os.X_OK):
        where = "SLUICE_BROKER_BIN" if override else "the default location"
        raise BrokerError(
            f"sluice-broker binary not found at {path} ({where}). "
            "Build it first with `cargo build -p sluice-broker` from the repo root, "
            "or point SLUICE_BROKER_BIN at an existing binary."
        )
    return path


class Broker:
    """One `sluice-broker serve` process on ephemeral ports.

    stdout carries only the ready line; stderr (logs) goes to `log_path`.
    The same data dir can be served again after stop() via start()."""

    def __init__(self, binary: Path, data_dir: Path, log_path: Path, extra_args=(),
                 listen: str = "127.0.0.1:0"):
        self.binary = Path(binary)
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        # A cluster member keeps its Kafka address across restarts (its
        # peers know it by that address); a lone broker takes any port.
        self.listen = listen
        self.proc: subprocess.Popen | None = None
        self.kafka_addr: str | None = None
        self.admin_addr: str | None = None
        self.starts = 0
        self.last_returncode: int | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> "Broker":
        self.launch()
        return self.await_ready(timeout)

    def launch(self):
        """Starts the process without waiting for its ready line (a cluster
        member is ready only once a quorum of its peers runs)."""
        if self.proc is not None and self.proc.poll() is None:
            raise BrokerError("broker already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary),
            "serve",
            "--data-dir",
            str(self.data_dir),
            # (A broker given --listeners names every address itself.)
            *(() if "--listeners" in self.extra_args else ("--listen", self.listen)),
            "--admin-listen",
            "127.0.0.1:0",
            *self.extra_args,
        ]
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(args)}\n".encode())
        log.flush()
        # The broker reads SLUICE_* env vars as flag defaults (SLUICE_CONFIG,
        # SLUICE_AUTO_CREATE_TOPICS, ...): keep the tests hermetic.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") or k == "SLUICE_LOG"}
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
        log.close()

    def await_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> "Broker":
        line = self._read_ready_line(timeout)
        m = READY_RE.match(line)
        if not m:
            self.kill()
            raise BrokerError(
                f"unexpected first stdout line from broker: {line!r}\n{self.log_tail()}"
            )
        self.kafka_addr = m.group("kafka")
        self.admin_addr = m.group("admin")
        return self

    def _read_ready_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + timeout
        try:
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise BrokerError(
                        f"broker did not print its ready line within {timeout}s "
                        f"(stdout so far: {buf!r})\n{self.log_tail()}"
                    )
                if not sel.select(min(remaining, 0.2)):
                    if self.proc.poll() is not None:
                        break
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        finally:
            sel.close()
        if b"\n" not in buf:
            rc = self.proc.wait(timeout=5)
            raise BrokerError(
                f"broker exited (rc={rc}) before printing its ready line "
                f"(stdout: {buf!r})\n{self.log_tail()}"
            )
        return buf.split(b"\n", 1)[0].decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig`, wait for exit and return the exit code (negative = signal)."""
        if self.proc is None:
            return self.last_returncode if self.last_returncode is not None else 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self._close_stdout()
                self.last_returncode = self.proc.returncode
                self.proc = None
                raise BrokerError(
                    f"broker did not exit within {timeout}s of {sig!r}; killed it"
                )
        self._close_stdout()
        self.last_returncode = self.proc.returncode
        self.proc = None
        return self.last_returncode

    def kill(self) -> int:
        return self.stop(sig=signal.SIGKILL, timeout=10)

    def restart(self) -> "Broker":
        self.stop()
        return self.start()

    def _close_stdout(self):
        if self.proc is not None and self.proc.stdout is not None:
            try:
                self.proc.stdout.close()
            except OSError:
                pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- diagnostics -------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, max_chars: int = 20000) -> str:
        text = self.log_text()
        if len(text) > max_chars:
            text = "...(truncated)...\n" + text[-max_chars:]
        return f"--- broker stderr ({self.log_path}) ---\n{text}"

    # -- admin HTTP ----------------------------------------------------------
    def http_get(self, path: str, timeout: float = 5.0):
        """Return (status, headers, body_text) for GET on the admin listener."""
        url = f"http://{self.admin_addr}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode(errors="replace")


def free_ports(n: int) -> list[int]:
    """Ports free right now (bound, read, released)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """`n` brokers (ids 0..n-1) forming one cluster on this machine. It
    stands in for a module's broker: `kafka_addr` is the bootstrap list,
    `metrics()` sums a series over the brokers."""

    def __init__(self, binary: Path, base: Path, n: int = 3, extra_args=(), split=None):
        """`split=(client, internal)`: each broker gets a CLIENT listener of
        security protocol `client` (what `kafka_addr` lists) and an INTERNAL
        one of protocol `internal`, the inter-broker listener
        (`internal_addr`, what `--peers` names)."""
        ports = free_ports(2 * n if split else n)
        client, internal = ports[:n], (ports[n:] if split else ports[:n])
        peers = ",".join(f"{i}@127.0.0.1:{p}" for i, p in enumerate(internal))

        def listeners(i):
            if not split:
                return ()
            return (
                "--listeners", f"CLIENT://127.0.0.1:{client[i]},INTERNAL://127.0.0.1:{internal[i]}",
                "--listener-security-protocol-map", f"CLIENT:{split[0]},INTERNAL:{split[1]}",
                "--inter-broker-listener-name", "INTERNAL",
            )

        self.brokers = [
            Broker(
                binary,
                data_dir=base / f"broker-{i}" / "data",
                log_path=base / f"broker-{i}.log",
                extra_args=("--node-id", str(i), "--peers", peers, *listeners(i), *extra_args),
                listen=f"127.0.0.1:{client[i]}",
            )
            for i in range(n)
        ]
        self.kafka_addr = ",".join(f"127.0.0.1:{p}" for p in client)
        self.internal_addr = ",".join(f"127.0.0.1:{p}" for p in internal)
        self.log_path = base

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> "Cluster":
        for b in self.brokers:
            b.launch()
        for b in self.brokers:
            b.await_ready(timeout)
        return self

    def stop(self):
        for b in self.brokers:
            b.stop()

    @property
    def running(self) -> bool:
        return all(b.running for b in self.brokers)

    @property
    def proc(self):
        return next((b.proc for b in self.brokers if not b.running), self.brokers[0].proc)

    def log_tail(self, max_chars: int = 20000) -> str:
        per = max_chars // len(self.brokers)
        return "\n".join(b.log_tail(per) for b in self.brokers)


def unique_topic(prefix: str = "t") -> str:
    prefix = re.sub(r"[^A-Za-z0-9._-]", "-", prefix)[:80]
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")


# --------------------------------------------------------------------------
# confluent-kafka helpers
# --------------------------------------------------------------------------
def ck_admin(bootstrap: str, **extra):
    from confluent_kafka.admin import AdminClient

    conf = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000}
    conf.update(extra)
    return AdminClient(conf)


def ck_create_topic(bootstrap: str, name: str, partitions: int = 1, config=None, timeout: float = 15.0):
    from confluent_kafka.admin import NewTopic

    admin = ck_admin(bootstrap)
    futs = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))],
        request_timeout=timeout,
        operation_timeout=timeout,
    )
    futs[name].result(timeout=timeout)
    wait_topic_everywhere(bootstrap, name, partitions, timeout)
    return name


def wait_topic_everywhere(bootstrap: str, name: str, partitions: int, timeout: float = 15.0):
    """Waits until every broker of `bootstrap` lists `name` with its
    partitions. CreateTopics answers once the controller has committed the
    topic; the other brokers learn it a moment later (as in Kafka), and a
    consumer asking one of them first reports the subscribed topic as not
    available."""
    deadline = time.monotonic() + timeout
    for addr in bootstrap.split(","):
        admin = ck_admin(addr)
        while True:
            md = admin.list_topics(topic=name, timeout=5)
            t = md.topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not known to {addr} within {timeout}s")
            time.sleep(0.05)


def ck_producer(bootstrap: str, **extra):
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "message.timeout.ms": 20000,
        "socket.timeout.ms": 10000,
        "enable.idempotence": False,
    }
    conf.update(extra)
    return Producer(conf)


def ck_consumer(bootstrap: str, **extra):
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": bootstrap,
        # librdkafka requires a group.id; the broker has no group support, so
        # the tests only ever use assign() with explicit offsets and never commit.
        "group.id": "sluice-py-" + uuid.uuid4().hex[:8],
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "socket.timeout.ms": 10000,
        "fetch.wait.max.ms": 100,
    }
    conf.update(extra)
    return Consumer(conf)


def ck_produce_all(producer, topic: str, records, timeout: float = 20.0):
    """Produce `records` (dicts of produce() kwargs) and return the delivered
    messages in send order; raise on any delivery error."""
    delivered = [None] * len(records)
    errors = []

    def make_cb(i):
        def cb(err, msg):
            if err is not None:
                errors.append((i, err))
            delivered[i] = msg

        return cb

    for i, rec in enumerate(records):
        while True:
            try:
                producer.produce(topic, on_delivery=make_cb(i), **rec)
                break
            except BufferError:
                producer.poll(0.1)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} messages not delivered within {timeout}s"
    if errors:
        raise AssertionError(f"delivery errors: {errors[:5]}")
    return delivered


def ck_consume(consumer, n: int, timeout: float = 15.0):
    """Poll until exactly `n` messages arrived (or fail); returns them."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(out)} of {n} messages consumed within {timeout}s")
        msgs = consumer.consume(num_messages=n - len(out), timeout=min(remaining, 0.5))
        for m in msgs:
            if m.error():
                from confluent_kafka import KafkaError

                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consume error: {m.error()}")
            out.append(m)
    return out


def ck_assert_no_more(consumer, wait: float = 1.0):
    msgs = [m for m in consumer.consume(num_messages=100, timeout=wait) if not m.error()]
    assert not msgs, f"unexpected extra messages: {[(m.partition(), m.offset(), m.value()) for m in msgs]}"


# --------------------------------------------------------------------------
# kafka-python helpers
# --------------------------------------------------------------------------
def kp_admin(bootstrap: str, **extra):
    from kafka import KafkaAdminClient

    conf = dict(bootstrap_servers=bootstrap, request_timeout_ms=15000, bootstrap_timeout_ms=15000)
    conf.update(extra)
    return KafkaAdminClient(**conf)


def kp_producer(bootstrap: str, **extra):
    from kafka import KafkaProducer

    conf = dict(
        bootstrap_servers=bootstrap,
        # No InitProducerId on the broker: opt out of the (default-on) idempotence.
        enable_idempotence=False,
        linger_ms=5,
        request_timeout_ms=15000,
        delivery_timeout_ms=20000,
        max_block_ms=15000,
        bootstrap_timeout_ms=15000,
    )
    conf.update(extra)
    return KafkaProducer(**conf)


def kp_consumer(bootstrap: str, **extra):
    from kafka import KafkaConsumer

    conf = dict(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=15000,
        fetch_max_wait_ms=100,
        bootstrap_timeout_ms=15000,
    )
    conf.update(extra)
    return KafkaConsumer(**conf)


def kp_consume(consumer, n: int, timeout: float = 15.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(out)} of {n} records consumed within {timeout}s")
        batches = consumer.poll(timeout_ms=int(min(remaining, 0.5) * 1000), max_records=n - len(out))
        for recs in batches.values():
            out.extend(recs)
    return out


def parse_prometheus(text: str):
    """Return list of (name, labels_str, value) for every sample line."""
    samples = []
    line_re = re.compile(
        r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})?\s+(?P<value>\S+)(\s+\S+)?$"
    )
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            raise AssertionError(f"not a Prometheus text-format sample line: {line!r}")
        samples.append((m.group("name"), m.group("labels") or "", float(m.group("value"))))
    return samples


# --------------------------------------------------------------------------
# consumer groups
# --------------------------------------------------------------------------
# `serve` flags for group tests: a short initial rebalance delay (Kafka's
# default of 3 s would dominate every test).
GROUP_BROKER_ARGS = ("--group-initial-rebalance-delay-ms", "200")

# Fast group timings for librdkafka consumers (session >= the broker's 1 s minimum).
CK_GROUP_CONF = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 300,
    "max.poll.interval.ms": 30000,
    "topic.metadata.refresh.interval.ms": 2000,
    "coordinator.query.interval.ms": 2000,
}


def ck_group_consumer(bootstrap: str, group: str, **extra):
    """A subscribe()-style confluent-kafka consumer in `group` with manual
    commits (offsets are never stored or committed implicitly)."""
    conf = {"group.id": group, **CK_GROUP_CONF}
    conf.update(extra)
    return ck_consumer(bootstrap, **conf)


def metrics(broker) -> list:
    """Every sample of a broker's /metrics (of every member of a Cluster)."""
    if isinstance(broker, Cluster):
        return [s for b in broker.brokers for s in metrics(b)]
    status, _, body = broker.http_get("/metrics")
    assert status == 200, f"/metrics returned {status}: {body[:500]}"
    return parse_prometheus(body)


def parse_labels(labels: str) -> dict:
    """'{a="x",b="y"}' -> {'a': 'x', 'b': 'y'} (handles \\" and \\\\ escapes)."""
    out = {}
    for m in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels or ""):
        out[m.group(1)] = re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), m.group(2))
    return out


def metric_values(broker, name: str, **labels) -> list:
    """Values of every `name` sample whose labels include `labels`."""
    want = {k: str(v) for k, v in labels.items()}
    return [
        v
        for n, l, v in metrics(broker)
        if n == name and all(parse_labels(l).get(k) == val for k, val in want.items())
    ]


def metric_value(broker, name: str, default=None, **labels):
    """The single matching sample's value (`default` if none matches); for
    a Cluster, the sum over its brokers (a group's series exist only on its
    coordinator; counters add up)."""
    vals = metric_values(broker, name, **labels)
    if not vals:
        return default
    if isinstance(broker, Cluster):
        return sum(vals)
    assert len(vals) == 1, f"{len(vals)} samples of {name} match {labels}: {vals}"
    return vals[0]
