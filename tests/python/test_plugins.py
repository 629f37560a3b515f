"""WebAssembly plugins on the produce path, end to end with real clients.

Plugins are uploaded through the admin HTTP API (and the `sluice-broker
plugin` CLI), bound to topics through topic configs, and their effect is
checked by consuming what the broker stored: placement by a partitioner
(confluent-kafka, kafka-python and kcat producers), interceptors that
rewrite or reject, produce-side filters, the sandbox (deadline, memory cap,
traps) with the three failure policies, and hot swapping a plugin version
while producers run. Needs the example plugins (`scripts/build-plugins`)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from sluice_testlib import (
    REPO_ROOT,
    broker_binary,
    ck_admin,
    ck_consume,
    ck_consumer,
    ck_create_topic,
    ck_produce_all,
    ck_producer,
    kp_producer,
    metric_value,
    unique_topic,
)

WASM_DIR = REPO_ROOT / "plugins" / "examples" / "target" / "wasm32-unknown-unknown" / "release"
FIXTURES = REPO_ROOT / "plugins" / "fixtures"


def wasm(name: str):
    path = WASM_DIR / f"{name}.wasm"
    if not path.is_file():
        pytest.fail(f"{path} missing: run scripts/build-plugins", pytrace=False)
    return path


def fixture(name: str):
    path = FIXTURES / f"{name}.wat"
    assert path.is_file(), path
    return path


def uniq(prefix: str) -> str:
    """A plugin name private to one test (metrics are labelled by plugin)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------
# admin HTTP
# --------------------------------------------------------------------------
def http(broker, method: str, path: str, body: bytes | None = None, timeout: float = 30.0):
    """(status, parsed JSON body or None) of one admin API call."""
    req = urllib.request.Request(f"http://{broker.admin_addr}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, (json.loads(raw) if raw else None)
    except ValueError:
        return status, raw.decode(errors="replace")


def upload(broker, name: str, kind: str | None, data: bytes):
    q = f"?kind={kind}" if kind else ""
    return http(broker, "POST", f"/v1/plugins/{name}{q}", data)


def upload_ok(broker, name: str, kind: str, path) -> dict:
    status, body = upload(broker, name, kind, path.read_bytes())
    assert status == 201, f"upload of {path.name} as {name}: {status} {body}"
    return body


def describe(broker, name: str):
    return http(broker, "GET", f"/v1/plugins/{name}")


def list_plugins(broker) -> dict:
    status, body = http(broker, "GET", "/v1/plugins")
    assert status == 200, (status, body)
    assert isinstance(body, list), body
    return {p["name"]: p for p in body}


def cli(broker, *args, timeout: float = 60.0):
    return subprocess.run(
        [str(broker_binary()), "plugin", "--admin", broker.admin_addr, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin"},
    )


# --------------------------------------------------------------------------
# Kafka helpers
# --------------------------------------------------------------------------
def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def tenant_partition(tenant: str, partitions: int) -> int:
    return fnv1a(tenant.encode()) % partitions


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import TopicPartition

    c = ck_consumer(bootstrap)
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        c.close()


def read_partitions(bootstrap: str, topic: str, partitions: int, expect: int | None = None) -> dict[int, list]:
    """Every stored record of every partition, by partition, in offset order
    (the end offsets say how many to expect; nothing more may arrive).

    An idempotent producer's batch whose records a plugin moved elsewhere
    leaves an empty batch holding its sequence in the partition it was sent
    to: offsets then have gaps, so say how many records to `expect`."""
    from confluent_kafka import TopicPartition

    ends = end_offsets(bootstrap, topic, partitions)
    out = {p: [] for p in range(partitions)}
    total = sum(ends) if expect is None else expect
    if total:
        c = ck_consumer(bootstrap)
        try:
            c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
            for m in ck_consume(c, total):
                out[m.partition()].append(m)
            extra = [m for m in c.consume(num_messages=100, timeout=0.5) if not m.error()]
            assert not extra, f"records past the end offsets {ends}: {[(m.partition(), m.offset()) for m in extra]}"
        finally:
            c.close()
    for p, msgs in out.items():
        msgs.sort(key=lambda m: m.offset())
        offsets = [m.offset() for m in msgs]
        if expect is None:
            assert offsets == list(range(ends[p])), f"partition {p}: offsets not 0..{ends[p] - 1}"
        else:
            assert len(set(offsets)) == len(offsets) and all(o < ends[p] for o in offsets), (
                f"partition {p}: offsets {offsets} (end {ends[p]})")
    return out


def produce_expect_errors(producer, topic: str, records, timeout: float = 20.0):
    """Produce `records` and return the delivery error of each (None = ok)."""
    pending = object()
    errs: list = [pending] * len(records)

    def cb_for(i):
        def cb(err, msg):
            errs[i] = err

        return cb

    for i, rec in enumerate(records):
        producer.produce(topic, on_delivery=cb_for(i), **rec)
    assert producer.flush(timeout) == 0, "not all delivery reports arrived"
    # (`is`: KafkaError.__eq__ only compares with error codes)
    assert not any(e is pending for e in errs)
    return errs


def bind(bootstrap: str, topic: str, configs: dict):
    """IncrementalAlterConfigs SET of `configs` on `topic`."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()
        ],
    )
    admin = ck_admin(bootstrap)  # must outlive the future
    admin.incremental_alter_configs([res])[res].result(timeout=15)


def topic_configs(bootstrap: str, topic: str) -> dict:
    from confluent_kafka.admin import ConfigResource

    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = ck_admin(bootstrap)  # must outlive the future
    entries = admin.describe_configs([res])[res].result(timeout=15)
    return {k: v.value for k, v in entries.items()}


def errors_total(broker, plugin: str, kind: str) -> float:
    return metric_value(broker, "sluice_plugin_errors_total", 0.0, plugin=plugin, kind=kind)


def records_total(broker, plugin: str, outcome: str) -> float:
    return metric_value(broker, "sluice_plugin_records_total", 0.0, plugin=plugin, outcome=outcome)


# ==========================================================================
# 1. Upload, list, describe, replace, delete (HTTP and CLI)
# ==========================================================================
def test_http_upload_list_describe_replace_delete(broker, bootstrap):
    name = uniq("tenant")
    data = wasm("tenant_router").read_bytes()
    status, info = upload(broker, name, "partitioner", data)
    assert status == 201, info
    assert info["version"] == 1
    assert info["kind"] == "partitioner"
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["size"] == len(data)
    assert info["abi_version"] == 1
    assert isinstance(info["uploaded_ms"], int) and abs(info["uploaded_ms"] - time.time() * 1000) < 60_000

    listed = list_plugins(broker)[name]
    assert (listed["kind"], listed["version"], listed["sha256"], listed["size"]) == (
        "partitioner", 1, info["sha256"], len(data))
    assert listed["bound_topics"] == []
    assert [v["version"] for v in listed["versions"]] == [1]

    status, desc = describe(broker, name)
    assert status == 200 and desc["sha256"] == info["sha256"] and desc["abi_version"] == 1

    # A new version under the same name (WAT text is accepted too).
    wat = fixture("constant").read_bytes()
    status, v2 = upload(broker, name, "partitioner", wat)
    assert status == 201, v2
    assert v2["version"] == 2 and v2["sha256"] == hashlib.sha256(wat).hexdigest() and v2["size"] == len(wat)
    status, desc = describe(broker, name)
    assert desc["version"] == 2 and desc["sha256"] == v2["sha256"]
    assert [(v["version"], v["sha256"]) for v in desc["versions"]] == [(1, info["sha256"]), (2, v2["sha256"])]
    # ... kind may be left out for a new version, but cannot change.
    status, v3 = upload(broker, name, None, data)
    assert status == 201 and v3["version"] == 3 and v3["kind"] == "partitioner", v3
    status, err = upload(broker, name, "interceptor", wasm("redact").read_bytes())
    assert status == 400 and "partitioner" in err["error"] and "interceptor" in err["error"], err
    assert describe(broker, name)[1]["version"] == 3, "a refused upload must not create a version"

    # Unknown plugins.
    assert describe(broker, "no-such-plugin")[0] == 404
    status, err = http(broker, "DELETE", "/v1/plugins/no-such-plugin")
    assert status == 404 and "does not exist" in err["error"], err

    # Unbound: deleted outright.
    status, _ = http(broker, "DELETE", f"/v1/plugins/{name}")
    assert status in (200, 204)
    assert describe(broker, name)[0] == 404
    assert name not in list_plugins(broker)


BAD_UPLOADS = [
    # (case, kind, body, words the error must contain)
    ("wrong-signature", "partitioner", lambda: fixture("wrong-signature").read_bytes(), ["sluice_partition"]),
    ("bad-import", "partitioner", lambda: fixture("bad-import").read_bytes(), ["fd_write"]),
    ("abi-v2", "partitioner", lambda: fixture("abi-v2").read_bytes(), ["ABI version 2"]),
    ("not-wasm", "partitioner", lambda: b"\x00asm garbage, not a module", ["not a valid WebAssembly module"]),
    ("missing-export-for-kind", "interceptor", lambda: wasm("tenant_router").read_bytes(), ["sluice_intercept"]),
    ("unknown-kind", "router", lambda: wasm("tenant_router").read_bytes(), ["unknown plugin kind"]),
    ("no-kind", None, lambda: wasm("tenant_router").read_bytes(), ["kind"]),
    ("too-large", "partitioner", lambda: b"\0" * ((16 << 20) + 1), ["16777216"]),
]


@pytest.mark.parametrize("case,kind,body,words", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_http_refuses_bad_modules_with_a_reason(broker, bootstrap, case, kind, body, words):
    name = uniq(case)
    status, err = upload(broker, name, kind, body())
    assert status == 400, (status, err)
    assert isinstance(err, dict) and isinstance(err.get("error"), str), err
    for w in words:
        assert w in err["error"], f"error {err['error']!r} should name {w!r}"
    assert describe(broker, name)[0] == 404, "nothing may be stored for a refused upload"


def test_http_refuses_bad_plugin_names(broker, bootstrap):
    status, err = http(broker, "POST", "/v1/plugins/Bad.Name?kind=partitioner", wasm("trivial_partitioner").read_bytes())
    assert status == 400 and "Bad.Name" in err["error"], (status, err)


def test_bindings_are_checked_and_block_deletion(broker, bootstrap):
    from confluent_kafka import KafkaException

    part, icpt = uniq("part"), uniq("icpt")
    upload_ok(broker, part, "partitioner", wasm("trivial_partitioner"))
    upload_ok(broker, icpt, "interceptor", wasm("stamp_header"))

    # Binding a plugin that is not uploaded, or of the wrong kind: INVALID_CONFIG.
    for configs, words in [
        ({"sluice.partitioner": "never-uploaded"}, "not uploaded"),
        ({"sluice.partitioner": icpt}, "interceptor"),
        ({"sluice.interceptors": part}, "partitioner"),
        ({"sluice.filters": icpt}, "interceptor"),
    ]:
        with pytest.raises(KafkaException) as ei:
            ck_create_topic(bootstrap, unique_topic("refused"), config=configs)
        assert ei.value.args[0].name() == "INVALID_CONFIG", ei.value
        assert words in str(ei.value), ei.value

    topic = unique_topic("bound")
    ck_create_topic(bootstrap, topic, partitions=2, config={"sluice.partitioner": part})
    with pytest.raises(KafkaException) as ei:
        bind(bootstrap, topic, {"sluice.interceptors": "never-uploaded"})
    assert ei.value.args[0].name() == "INVALID_CONFIG", ei.value
    bind(bootstrap, topic, {"sluice.interceptors": icpt})
    cfg = topic_configs(bootstrap, topic)
    assert cfg.get("sluice.partitioner") == part and cfg.get("sluice.interceptors") == icpt, cfg

    assert list_plugins(broker)[part]["bound_topics"] == [topic]
    assert describe(broker, icpt)[1]["bound_topics"] == [topic]

    # Deletion is refused while bound, naming the topic; ?force=true overrides.
    status, err = http(broker, "DELETE", f"/v1/plugins/{part}")
    assert status == 409 and topic in err["error"], (status, err)
    assert describe(broker, part)[0] == 200
    status, _ = http(broker, "DELETE", f"/v1/plugins/{part}?force=true")
    assert status in (200, 204)
    assert describe(broker, part)[0] == 404

    # The topic still names the deleted plugin: produces fail (reject policy)
    # and the missing plugin is counted.
    errs = produce_expect_errors(ck_producer(bootstrap), topic, [{"value": b"x", "partition": 0}])
    assert errs[0] is not None and errs[0].name() == "POLICY_VIOLATION", errs
    assert errors_total(broker, part, "missing") >= 1


def test_delete_of_force_deleted_plugin_still_named_by_a_topic_is_404(broker, bootstrap):
    """After a forced delete the topic config still names the plugin; the
    plugin itself is gone, so a second DELETE must say 404 (not 409 'bound')."""
    name = uniq("gone")
    upload_ok(broker, name, "partitioner", wasm("trivial_partitioner"))
    ck_create_topic(bootstrap, unique_topic("gone"), config={"sluice.partitioner": name})
    assert http(broker, "DELETE", f"/v1/plugins/{name}?force=true")[0] in (200, 204)
    assert describe(broker, name)[0] == 404
    status, err = http(broker, "DELETE", f"/v1/plugins/{name}")
    assert status == 404, f"DELETE of a plugin that does not exist answered {status}: {err}"


def test_cli_upload_list_describe_delete(broker, bootstrap):
    name = uniq("cli")
    path = wasm("tenant_router")
    r = cli(broker, "upload", "--name", name, "--kind", "partitioner", path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["version"] == 1 and info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    r = cli(broker, "list")
    assert r.returncode == 0, r.stderr
    listed = {p["name"]: p for p in json.loads(r.stdout)}
    assert listed[name]["sha256"] == info["sha256"] and listed[name]["kind"] == "partitioner"

    # New version without --kind, from WAT text.
    r = cli(broker, "upload", "--name", name, fixture("constant"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == 2

    r = cli(broker, "describe", name)
    assert r.returncode == 0, r.stderr
    desc = json.loads(r.stdout)
    assert desc["version"] == 2 and len(desc["versions"]) == 2

    # Refused uploads: non-zero exit with the broker's reason.
    for fx, word in [("wrong-signature", "sluice_partition"), ("bad-import", "fd_write"), ("abi-v2", "ABI version 2")]:
        r = cli(broker, "upload", "--name", uniq(fx), "--kind", "partitioner", fixture(fx))
        assert r.returncode != 0, f"{fx}: CLI exited 0: {r.stdout}"
        assert "400" in r.stderr and word in r.stderr, f"{fx}: {r.stderr}"

    # Bound: delete refused (409), --force deletes.
    topic = unique_topic("cli-bound")
    ck_create_topic(bootstrap, topic, partitions=2, config={"sluice.partitioner": name})
    r = cli(broker, "delete", name)
    assert r.returncode != 0 and "409" in r.stderr and topic in r.stderr, r.stderr
    assert cli(broker, "describe", name).returncode == 0
    r = cli(broker, "delete", name, "--force")
    assert r.returncode == 0, r.stderr
    r = cli(broker, "describe", name)
    assert r.returncode != 0 and "404" in r.stderr, r.stderr
    r = cli(broker, "delete", uniq("never-uploaded"))
    assert r.returncode != 0 and "404" in r.stderr and "does not exist" in r.stderr, r.stderr


def test_plugins_survive_a_restart(broker_factory):
    b = broker_factory(name="plugins-restart")
    upload_ok(b, "tenant-router", "partitioner", wasm("tenant_router"))
    upload_ok(b, "stamp", "interceptor", wasm("stamp_header"))
    upload_ok(b, "stamp", "interceptor", wasm("redact"))  # version 2
    topic = unique_topic("restart")
    ck_create_topic(b.kafka_addr, topic, partitions=4,
                    config={"sluice.partitioner": "tenant-router", "sluice.interceptors": "stamp"})
    before = list_plugins(b)

    b.restart()

    after = list_plugins(b)
    assert set(after) == set(before) == {"tenant-router", "stamp"}
    for n in before:
        for field in ("kind", "version", "sha256", "size", "abi_version", "versions", "bound_topics"):
            assert after[n][field] == before[n][field], f"{n}.{field}: {before[n][field]!r} -> {after[n][field]!r}"
    assert after["stamp"]["version"] == 2 and after["tenant-router"]["bound_topics"] == [topic]

    # And they still run: version 2 of "stamp" (redact) and the router.
    ck_produce_all(ck_producer(b.kafka_addr), topic,
                   [{"partition": 0, "value": json.dumps({"tenant": "acme", "email": "a@b.c"}).encode()}])
    stored = read_partitions(b.kafka_addr, topic, 4)
    want = tenant_partition("acme", 4)
    assert [len(stored[p]) for p in range(4)] == [1 if p == want else 0 for p in range(4)]
    m = stored[want][0]
    assert json.loads(m.value())["email"] == "***"
    assert ("redacted", b"email,ssn") in (m.headers() or [])


# ==========================================================================
# 2. Partitioner with every client
# ==========================================================================
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"]
ROUTED_PARTITIONS = 6


@pytest.fixture(scope="module")
def tenant_router(broker):
    upload_ok(broker, "tenant-router", "partitioner", wasm("tenant_router"))
    return "tenant-router"


def tenant_topic(bootstrap, tenant_router):
    topic = unique_topic("tenants")
    ck_create_topic(bootstrap, topic, partitions=ROUTED_PARTITIONS, config={"sluice.partitioner": tenant_router})
    return topic


def check_tenant_placement(bootstrap, topic, per_tenant: int, client_tag: str, extra_untenanted: int = 0,
                           idempotent: bool = False):
    """Every tenant's records in exactly fnv1a(tenant) % 6, in produce order,
    once each; records without a tenant in partition 0."""
    expected = {t: tenant_partition(t, ROUTED_PARTITIONS) for t in TENANTS}
    assert len(set(expected.values())) >= 3, f"tenants should spread over partitions: {expected}"
    expect = per_tenant * len(TENANTS) + extra_untenanted if idempotent else None
    stored = read_partitions(bootstrap, topic, ROUTED_PARTITIONS, expect)
    seen: dict[str, list] = {t: [] for t in TENANTS}
    untenanted = []
    for p, msgs in stored.items():
        for m in msgs:
            v = json.loads(m.value())
            assert v["client"] == client_tag
            if "tenant" not in v:
                untenanted.append(p)
                continue
            assert p == expected[v["tenant"]], (
                f"{v} stored in partition {p}, expected fnv1a % {ROUTED_PARTITIONS} = {expected[v['tenant']]}")
            seen[v["tenant"]].append(v["seq"])
    for t in TENANTS:
        assert seen[t] == list(range(per_tenant)), f"tenant {t}: stored seqs {seen[t]} (order/duplicates/loss)"
    assert untenanted == [0] * extra_untenanted, untenanted
    return stored


def tenant_values(per_tenant: int, client: str):
    # Interleave tenants so every batch mixes target partitions.
    return [(t, {"tenant": t, "seq": i, "client": client}) for i in range(per_tenant) for t in TENANTS]


def test_partitioner_confluent_kafka_idempotent_forced_partition_0(broker, bootstrap, tenant_router):
    topic = tenant_topic(bootstrap, tenant_router)
    per = 40
    recs = [{"partition": 0, "key": t.encode(), "value": json.dumps(v).encode()} for t, v in tenant_values(per, "ck")]
    recs.append({"partition": 0, "value": json.dumps({"client": "ck", "no": "tenant"}).encode()})
    recs.append({"partition": 3, "value": json.dumps({"client": "ck"}).encode()})
    p = ck_producer(bootstrap, **{"enable.idempotence": True, "linger.ms": 20})
    ck_produce_all(p, topic, recs)
    stored = check_tenant_placement(bootstrap, topic, per, "ck", extra_untenanted=2, idempotent=True)
    assert sum(len(v) for v in stored.values()) == len(recs), "idempotent producer: exactly one copy of each"


def test_partitioner_confluent_kafka_random_client_partitions(broker, bootstrap, tenant_router):
    topic = tenant_topic(bootstrap, tenant_router)
    rng = random.Random(7)
    # The client's partition is random per tenant (not per record, so that
    # per-tenant order is defined on the client side too).
    client_part = {t: rng.randrange(ROUTED_PARTITIONS) for t in TENANTS}
    per = 25
    recs = [{"partition": client_part[t], "value": json.dumps(v).encode()} for t, v in tenant_values(per, "ck-rand")]
    ck_produce_all(ck_producer(bootstrap, **{"linger.ms": 20, "max.in.flight": 1}), topic, recs)
    check_tenant_placement(bootstrap, topic, per, "ck-rand")


def test_partitioner_kafka_python(broker, bootstrap, tenant_router):
    topic = tenant_topic(bootstrap, tenant_router)
    per = 30
    prod = kp_producer(bootstrap, linger_ms=20, max_in_flight_requests_per_connection=1)
    futures = []
    for t, v in tenant_values(per, "kp"):
        # Deliberately the wrong partition: the plugin's choice wins.
        wrong = (tenant_partition(t, ROUTED_PARTITIONS) + 1) % ROUTED_PARTITIONS
        futures.append(prod.send(topic, value=json.dumps(v).encode(), key=t.encode(), partition=wrong))
    prod.flush(timeout=20)
    for f in futures:
        f.get(timeout=20)
    prod.close(timeout=5)
    check_tenant_placement(bootstrap, topic, per, "kp")


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
def test_partitioner_kcat(broker, bootstrap, tenant_router):
    topic = tenant_topic(bootstrap, tenant_router)
    per = 20
    lines = [f"{t}|{json.dumps(v, separators=(',', ':'))}" for t, v in tenant_values(per, "kcat")]
    proc = subprocess.run(
        ["kcat", "-b", bootstrap, "-P", "-t", topic, "-p", "5", "-K", "|", "-X", "linger.ms=20"],
        input=("\n".join(lines) + "\n").encode(),
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    check_tenant_placement(bootstrap, topic, per, "kcat")


class DropProduceResponsesProxy:
    """TCP proxy in front of a broker that lets the first `drops` Produce
    requests through, then throws their responses away and cuts the
    connection: the broker has written the batch, the client never heard
    back and must retry it (what idempotent producers deduplicate).
    Start the broker with `--advertised-listen <proxy.addr>` so every client
    connection goes through here."""

    def __init__(self, drops: int):
        self.drops = drops
        self.dropped = 0
        self.target = None
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closing = True
        self.sock.close()

    def _accept(self):
        while not self.closing:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            host, port = self.target.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            doomed: set[int] = set()
            threading.Thread(target=self._pump, args=(client, upstream, doomed, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, doomed, False), daemon=True).start()

    @staticmethod
    def _read_frame(s):
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (size,) = struct.unpack(">i", head)
        body = bytearray()
        while len(body) < size:
            chunk = s.recv(min(65536, size - len(body)))
            if not chunk:
                return None
            body += chunk
        return head + bytes(body)

    def _pump(self, src, dst, doomed, requests):
        try:
            while True:
                frame = self._read_frame(src)
                if frame is None:
                    break
                if requests:
                    api_key, _ver, corr = struct.unpack(">hhi", frame[4:12])
                    if api_key == 0:
                        with self.lock:
                            if self.dropped < self.drops:
                                self.dropped += 1
                                doomed.add(corr)
                else:
                    (corr,) = struct.unpack(">i", frame[4:8])
                    if corr in doomed:
                        break  # swallow the response and cut the connection
                dst.sendall(frame)
        except OSError:
            pass
        for s_ in (src, dst):
            try:
                s_.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s_.close()


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "plain-control"])
def test_partitioner_retried_batches_deduplicated_for_idempotent_producer(broker_factory, idempotent):
    """Produce responses of the first batches are lost after the broker wrote
    them; librdkafka retries. With enable.idempotence the retry is recognised
    (against the client-addressed partition) and every record is stored once
    in its tenant's partition. The plain producer is the control: it must
    show the duplicates, proving the faults were injected."""
    proxy = DropProduceResponsesProxy(drops=2)
    try:
        b = broker_factory(extra_args=("--advertised-listen", proxy.addr), name="dedup")
        proxy.target = b.kafka_addr
        upload_ok(b, "tenant-router", "partitioner", wasm("tenant_router"))
        topic = unique_topic("dedup")
        ck_create_topic(b.kafka_addr, topic, partitions=ROUTED_PARTITIONS, config={"sluice.partitioner": "tenant-router"})
        per = 30
        p = ck_producer(proxy.addr, **{"enable.idempotence": idempotent, "linger.ms": 20, "retry.backoff.ms": 50,
                                       "max.in.flight": 1 if not idempotent else 5})
        recs = [{"partition": 0, "value": json.dumps(v).encode()} for t, v in tenant_values(per, "dedup")]
        # Two waves so that both dropped responses hit data batches.
        ck_produce_all(p, topic, recs[: len(recs) // 2])
        ck_produce_all(p, topic, recs[len(recs) // 2:])
        assert proxy.dropped == 2, f"the proxy dropped {proxy.dropped} produce responses"
        if idempotent:
            check_tenant_placement(b.kafka_addr, topic, per, "dedup")
            assert metric_value(b, "sluice_duplicate_batches_total", 0.0, topic=topic) >= 1, \
                "the broker should have recognised at least one retried batch"
        else:
            total = sum(end_offsets(b.kafka_addr, topic, ROUTED_PARTITIONS))
            assert total > len(recs), f"control: a plain producer's retries should duplicate ({total} stored)"
    finally:
        proxy.close()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_plugins_on_compressed_batches(broker, bootstrap, tenant_router, interceptors, codec):
    topic = unique_topic(f"codec-{codec}")
    ck_create_topic(bootstrap, topic, partitions=ROUTED_PARTITIONS,
                    config={"sluice.partitioner": tenant_router, "sluice.interceptors": "redact"})
    per = 20
    recs = []
    for t, v in tenant_values(per, codec):
        v["email"] = f"{t}@example.com"
        v["pad"] = "x" * 200
        recs.append({"partition": 0, "value": json.dumps(v).encode()})
    ck_produce_all(ck_producer(bootstrap, **{"compression.type": codec, "linger.ms": 30}), topic, recs)
    stored = check_tenant_placement(bootstrap, topic, per, codec)
    for msgs in stored.values():
        for m in msgs:
            assert json.loads(m.value())["email"] == "***"
            assert m.headers() == [("redacted", b"email,ssn")]


# ==========================================================================
# 3. Interceptors
# ==========================================================================
@pytest.fixture(scope="module")
def interceptors(broker):
    upload_ok(broker, "redact", "interceptor", wasm("redact"))
    upload_ok(broker, "stamp-header", "interceptor", wasm("stamp_header"))
    upload_ok(broker, "size-guard", "interceptor", wasm("size_guard"))
    return broker


def test_redact_masks_fields_and_stamps_header(bootstrap, interceptors):
    topic = unique_topic("redact")
    ck_create_topic(bootstrap, topic, config={"sluice.interceptors": "redact"})
    recs = [
        {"key": b"k0", "value": json.dumps({"user": "ann", "email": "ann@example.com", "ssn": "123-45-6789"}).encode(),
         "headers": [("trace", b"t0")]},
        {"key": b"k1", "value": json.dumps({"user": "bob", "plan": "pro"}).encode()},
        {"key": b"k2", "value": json.dumps({"email": "carl@example.com"}).encode()},
        {"key": b"k3", "value": b"\xff\xfe not json or utf-8"},
    ]
    ck_produce_all(ck_producer(bootstrap), topic, [dict(r, partition=0) for r in recs])
    stored = read_partitions(bootstrap, topic, 1)[0]
    assert [m.key() for m in stored] == [b"k0", b"k1", b"k2", b"k3"]
    v0 = json.loads(stored[0].value())
    assert v0 == {"user": "ann", "email": "***", "ssn": "***"}
    assert stored[0].headers() == [("trace", b"t0"), ("redacted", b"email,ssn")]
    assert json.loads(stored[1].value()) == {"user": "bob", "plan": "pro"}
    assert not stored[1].headers(), "unchanged records get no header"
    assert json.loads(stored[2].value()) == {"email": "***"}
    assert stored[2].headers() == [("redacted", b"email,ssn")]
    assert stored[3].value() == recs[3]["value"] and not stored[3].headers()


def test_binding_config_reaches_the_plugin_and_changes_apply_live(bootstrap, interceptors):
    """`sluice.plugin.config.redact` is read by the plugin through the
    `config` host import: per topic, and from the next batch on after an
    IncrementalAlterConfigs (no re-upload)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    phone_only = unique_topic("redact-cfg")
    default = unique_topic("redact-default")
    ck_create_topic(bootstrap, phone_only, config={
        "sluice.interceptors": "redact", "sluice.plugin.config.redact": "phone"})
    ck_create_topic(bootstrap, default, config={"sluice.interceptors": "redact"})
    assert topic_configs(bootstrap, phone_only)["sluice.plugin.config.redact"] == "phone"
    value = json.dumps({"email": "ann@example.com", "phone": "555-0100"}).encode()
    for t in (phone_only, default):
        ck_produce_all(ck_producer(bootstrap), t, [{"partition": 0, "value": value}])
    [p] = read_partitions(bootstrap, phone_only, 1)[0]
    assert json.loads(p.value()) == {"email": "ann@example.com", "phone": "***"}
    assert p.headers() == [("redacted", b"phone")]
    [d] = read_partitions(bootstrap, default, 1)[0]
    assert json.loads(d.value()) == {"email": "***", "phone": "555-0100"}

    bind(bootstrap, phone_only, {"sluice.plugin.config.redact": "email, phone"})
    ck_produce_all(ck_producer(bootstrap), phone_only, [{"partition": 0, "value": value}])
    stored = read_partitions(bootstrap, phone_only, 1)[0]
    assert json.loads(stored[1].value()) == {"email": "***", "phone": "***"}

    # Deleting the key falls back to the plugin's default.
    res = ConfigResource(ConfigResource.Type.TOPIC, phone_only, incremental_configs=[
        ConfigEntry("sluice.plugin.config.redact", "", incremental_operation=AlterConfigOpType.DELETE)])
    admin = ck_admin(bootstrap)
    admin.incremental_alter_configs([res])[res].result(timeout=15)
    assert "sluice.plugin.config.redact" not in topic_configs(bootstrap, phone_only)
    ck_produce_all(ck_producer(bootstrap), phone_only, [{"partition": 0, "value": value}])
    stored = read_partitions(bootstrap, phone_only, 1)[0]
    assert json.loads(stored[2].value()) == {"email": "***", "phone": "555-0100"}


def test_binding_config_keys_are_validated(bootstrap, interceptors):
    from confluent_kafka import KafkaException

    topic = unique_topic("redact-badcfg")
    with pytest.raises(KafkaException) as e:
        ck_create_topic(bootstrap, topic, config={"sluice.plugin.config.Not A Name": "x"})
    assert "does not name a plugin" in str(e.value)


def test_interceptor_chain_applies_in_order(bootstrap, interceptors):
    topic = unique_topic("chain")
    ck_create_topic(bootstrap, topic, config={"sluice.interceptors": "redact,stamp-header"})
    cfg = topic_configs(bootstrap, topic)
    assert cfg.get("sluice.interceptors") == "redact,stamp-header", cfg
    recs = [
        {"partition": 0, "value": json.dumps({"email": "x@y.z"}).encode()},
        {"partition": 0, "value": json.dumps({"n": 1}).encode(), "headers": [("stamped", b"0")]},
    ]
    ck_produce_all(ck_producer(bootstrap), topic, recs)
    stored = read_partitions(bootstrap, topic, 1)[0]
    assert json.loads(stored[0].value()) == {"email": "***"}
    # redact ran first (its header comes first), then stamp-header.
    assert stored[0].headers() == [("redacted", b"email,ssn"), ("stamped", b"1")]
    assert stored[1].headers() == [("stamped", b"1")], "stamp-header replaces the client's header"


def test_size_guard_rejects_whole_batch_with_policy_violation(broker, bootstrap, interceptors):
    from confluent_kafka import KafkaError

    topic = unique_topic("guard")
    ck_create_topic(bootstrap, topic, partitions=2, config={"sluice.interceptors": "size-guard"})
    p = ck_producer(bootstrap, **{"linger.ms": 200, "retries": 0})
    ok = {"partition": 0, "value": b"small", "headers": [("schema", b"v1")]}
    errs = produce_expect_errors(p, topic, [ok, ok])
    assert errs == [None, None], errs
    assert end_offsets(bootstrap, topic, 2) == [2, 0]
    rejected_before = records_total(broker, "size-guard", "rejected")

    # Too large.
    errs = produce_expect_errors(p, topic, [{"partition": 0, "value": b"x" * 2000, "headers": [("schema", b"v1")]}])
    assert errs[0] is not None and errs[0].code() == KafkaError.POLICY_VIOLATION, errs
    # Missing header.
    errs = produce_expect_errors(p, topic, [{"partition": 1, "value": b"no schema"}])
    assert errs[0] is not None and errs[0].code() == KafkaError.POLICY_VIOLATION, errs
    # One bad record among good ones in the same batch: the whole batch fails.
    batch = [ok, ok, {"partition": 0, "value": b"bad"}, ok]
    errs = produce_expect_errors(p, topic, batch)
    assert all(e is not None and e.code() == KafkaError.POLICY_VIOLATION for e in errs), errs
    assert end_offsets(bootstrap, topic, 2) == [2, 0], "rejected produces must not move the end offsets"
    assert records_total(broker, "size-guard", "rejected") >= rejected_before + 3

    from kafka.errors import PolicyViolationError

    # kafka-python sees the same error, with the broker's message naming the
    # plugin and its reason.
    kp = kp_producer(bootstrap, retries=0)
    with pytest.raises(PolicyViolationError) as ei:
        kp.send(topic, value=b"y" * 1500, partition=1, headers=[("schema", b"v1")]).get(timeout=20)
    msg = str(ei.value)
    assert "size-guard" in msg and "1500 bytes" in msg and "1024" in msg, msg
    kp.send(topic, value=b"fine", partition=1, headers=[("schema", b"v1")]).get(timeout=20)
    kp.close(timeout=5)
    assert end_offsets(bootstrap, topic, 2) == [2, 1]


# ==========================================================================
# 4. Produce-side filter
# ==========================================================================
def test_produce_filter_never_stores_dropped_records(broker, bootstrap):
    name = uniq("keep")
    upload_ok(broker, name, "filter", wasm("keep_filter"))
    topic = unique_topic("filtered")
    ck_create_topic(bootstrap, topic, partitions=2, config={"sluice.filters": name})
    recs, kept = [], {0: [], 1: []}
    for i in range(60):
        level = ["info", "debug", "error"][i % 3]
        headers = [("keep", b"false")] if i % 10 == 7 else []
        part = i % 2
        recs.append({"partition": part, "key": f"k{i}".encode(),
                     "value": json.dumps({"level": level, "i": i}).encode(), "headers": headers})
        if level != "debug" and not headers:
            kept[part].append(i)
    # A batch made only of dropped records is acknowledged too.
    recs.append({"partition": 1, "value": b'{"level": "debug", "i": 999}'})
    p = ck_producer(bootstrap, **{"linger.ms": 30})
    ck_produce_all(p, topic, recs)
    stored = read_partitions(bootstrap, topic, 2)
    for part in (0, 1):
        got = [json.loads(m.value())["i"] for m in stored[part]]
        assert got == kept[part], f"partition {part}: stored {got}, expected {kept[part]}"
        assert [m.offset() for m in stored[part]] == list(range(len(kept[part])))
    assert end_offsets(bootstrap, topic, 2) == [len(kept[0]), len(kept[1])]
    total_kept = len(kept[0]) + len(kept[1])
    assert records_total(broker, name, "in") == len(recs)
    assert records_total(broker, name, "dropped") == len(recs) - total_kept
    assert records_total(broker, name, "out") == total_kept


# ==========================================================================
# 5. Sandbox under load, failure policies
# ==========================================================================
class BackgroundProducer:
    """Produces to `topic` (no plugins) from a thread until stopped."""

    def __init__(self, bootstrap, topic):
        self.topic = topic
        self.p = ck_producer(bootstrap, **{"linger.ms": 2})
        self.sent = 0
        self.errors = []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        def cb(err, msg):
            if err is not None:
                self.errors.append(err)

        while not self.stop_ev.is_set():
            self.p.produce(self.topic, value=f"b{self.sent}".encode(), partition=0, on_delivery=cb)
            self.sent += 1
            self.p.poll(0)
            time.sleep(0.003)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.t.join(10)
        assert self.p.flush(20) == 0


SANDBOX_CASES = [
    ("spin", {"sluice.plugin.timeout.ms": "50"}, "timeout", "deadline"),
    ("membomb", {"sluice.plugin.memory.bytes": str(4 << 20)}, "oom", f"memory limit of {4 << 20} bytes"),
    ("trap", {}, "trap", "trapped"),
    ("recurse", {}, "trap", "trapped"),
    ("huge-output", {}, "output_too_large", "2147483647 bytes of output"),
    ("bad-pointer", {}, "bad_output", "outside the module's memory"),
]


@pytest.mark.parametrize("fx,configs,kind,word", SANDBOX_CASES, ids=[c[0] for c in SANDBOX_CASES])
def test_misbehaving_partitioner_fails_its_topic_only(broker, bootstrap, fx, configs, kind, word):
    from confluent_kafka import KafkaError

    name = uniq(fx)
    upload_ok(broker, name, "partitioner", fixture(fx))
    bad, good = unique_topic(f"bad-{fx}"), unique_topic(f"good-{fx}")
    ck_create_topic(bootstrap, bad, partitions=3, config={"sluice.partitioner": name, **configs})
    ck_create_topic(bootstrap, good)
    before = errors_total(broker, name, kind)

    attempts = 6
    errs = []
    with BackgroundProducer(bootstrap, good) as bg:
        p = ck_producer(bootstrap, retries=0)
        for i in range(attempts):
            t0 = time.monotonic()
            errs += produce_expect_errors(p, bad, [{"partition": i % 3, "value": f"a{i}".encode()}])
            if fx == "spin":
                assert time.monotonic() - t0 < 5, "the deadline must cut the spinning call short"
        # kafka-python shows the broker's error message: plugin and reason.
        from kafka.errors import PolicyViolationError

        kp = kp_producer(bootstrap, retries=0)
        with pytest.raises(PolicyViolationError) as ei:
            kp.send(bad, value=b"kp", partition=1).get(timeout=20)
        kp.close(timeout=5)
        time.sleep(0.2)
    assert name in str(ei.value) and word in str(ei.value), str(ei.value)
    assert all(e is not None and e.code() == KafkaError.POLICY_VIOLATION for e in errs), errs
    assert bg.sent > 20 and not bg.errors, f"unrelated topic: {bg.sent} sent, errors {bg.errors[:3]}"
    assert end_offsets(bootstrap, good, 1) == [bg.sent]
    assert end_offsets(bootstrap, bad, 3) == [0, 0, 0]
    assert broker.running and broker.http_get("/healthz")[0] == 200
    assert errors_total(broker, name, kind) >= before + attempts + 1


def test_failure_policy_pass_keeps_client_partition(broker, bootstrap):
    name = uniq("trap-pass")
    upload_ok(broker, name, "partitioner", fixture("trap"))
    topic = unique_topic("pass")
    ck_create_topic(bootstrap, topic, partitions=3,
                    config={"sluice.partitioner": name, "sluice.plugin.failure.policy": "pass"})
    recs = [{"partition": 2, "key": f"k{i}".encode(), "value": f"v{i}".encode()} for i in range(5)]
    recs.append({"partition": 1, "value": b"other"})
    ck_produce_all(ck_producer(bootstrap), topic, recs)
    stored = read_partitions(bootstrap, topic, 3)
    assert [m.value() for m in stored[2]] == [f"v{i}".encode() for i in range(5)]
    assert [m.value() for m in stored[1]] == [b"other"]
    assert stored[0] == []
    assert errors_total(broker, name, "trap") >= 2


def test_failure_policy_dead_letter(broker, bootstrap):
    name = uniq("trap-dlt")
    upload_ok(broker, name, "partitioner", fixture("trap"))
    dlt = unique_topic("dlt")
    ck_create_topic(bootstrap, dlt)
    topic = unique_topic("dead-letter")
    ck_create_topic(bootstrap, topic, partitions=3, config={
        "sluice.partitioner": name,
        "sluice.plugin.failure.policy": "dead-letter",
        "sluice.plugin.dead.letter.topic": dlt,
    })
    recs = [{"partition": 1, "key": f"k{i}".encode(), "value": f"v{i}".encode(), "headers": [("h", str(i).encode())]}
            for i in range(5)]
    ck_produce_all(ck_producer(bootstrap, **{"linger.ms": 50}), topic, recs)  # acknowledged
    assert end_offsets(bootstrap, topic, 3) == [0, 0, 0]
    stored = read_partitions(bootstrap, dlt, 1)[0]
    assert [(m.key(), m.value(), m.headers()) for m in stored] == [
        (r["key"], r["value"], r["headers"]) for r in recs]
    assert records_total(broker, name, "dead_lettered") == 5

    # dead-letter without a dead-letter topic is refused.
    from confluent_kafka import KafkaException

    with pytest.raises(KafkaException, match="dead.letter.topic"):
        ck_create_topic(bootstrap, unique_topic("no-dlt"), config={
            "sluice.partitioner": name, "sluice.plugin.failure.policy": "dead-letter"})


# ==========================================================================
# 6. Hot swap
# ==========================================================================
def test_hot_swap_changes_routing_without_errors(broker, bootstrap):
    name = uniq("router")
    v1 = upload_ok(broker, name, "partitioner", wasm("header_router"))
    assert v1["version"] == 1
    topic = unique_topic("swap")
    ck_create_topic(bootstrap, topic, partitions=4)
    bind(bootstrap, topic, {"sluice.partitioner": name})
    assert topic_configs(bootstrap, topic).get("sluice.partitioner") == name
    pid = broker.proc.pid

    delivered_at = {}  # seq -> monotonic time of its delivery report
    errors = []
    seq = 0
    p = ck_producer(bootstrap, **{"linger.ms": 2})

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered_at[int(msg.value())] = time.monotonic()

    def produce_for(seconds):
        nonlocal seq
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            p.produce(topic, value=str(seq).encode(), partition=0, headers=[("route-to", b"3")], on_delivery=cb)
            seq += 1
            p.poll(0)
            time.sleep(0.004)

    produce_for(1.0)
    swap_started = time.monotonic()
    swap = {}
    t = threading.Thread(target=lambda: swap.update(
        r=upload(broker, name, "partitioner", fixture("constant").read_bytes())))
    t.start()
    while t.is_alive():
        produce_for(0.05)
    t.join()
    first_after = seq
    produce_for(1.0)
    assert p.flush(20) == 0
    status, v2 = swap["r"]
    assert status == 201 and v2["version"] == 2, v2

    assert not errors, f"produce errors during the swap: {errors[:5]}"
    assert broker.running and broker.proc.pid == pid and broker.starts == 1
    stored = read_partitions(bootstrap, topic, 4)
    where = {int(m.value()): p_ for p_, msgs in stored.items() for m in msgs}
    assert sorted(where) == list(range(seq)), "every record stored exactly once"
    assert stored[0] == [] and stored[2] == []
    before = [s for s, t_ in delivered_at.items() if t_ < swap_started]
    assert before and all(where[s] == 3 for s in before), "version 1 routed by the route-to header"
    after = range(first_after, seq)
    assert len(after) > 10
    wrong = [s for s in after if where[s] != 1]
    assert not wrong, f"records produced after version 2 was live went elsewhere: {wrong[:10]}"
    # Per-partition order is kept across the swap.
    for part in (1, 3):
        vals = [int(m.value()) for m in stored[part]]
        assert vals == sorted(vals)
    status, desc = describe(broker, name)
    assert desc["version"] == 2 and [v["version"] for v in desc["versions"]] == [1, 2]
    assert desc["bound_topics"] == [topic]
