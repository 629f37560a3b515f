"""kafka-python against sluice-broker.

Consumers use group_id=None and assign(); producers disable idempotence
(the broker has no InitProducerId)."""

from __future__ import annotations

import time

import pytest
import kafka.codec
import kafka.errors as Errors
from kafka import TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, OffsetSpec

from sluice_testlib import kp_admin, kp_consume, kp_consumer, kp_producer, wait_until

MIB = 1024 * 1024

CODEC_AVAILABLE = {
    "gzip": (kafka.codec.has_gzip(), "gzip is in the standard library"),
    "snappy": (kafka.codec.has_snappy(), "python-snappy (module `snappy`) is not installed"),
    "lz4": (kafka.codec.has_lz4(), "lz4 (module `lz4.frame`) is not installed"),
    "zstd": (kafka.codec.has_zstd(), "zstandard (module `zstandard`) is not installed"),
}


@pytest.fixture
def admin(bootstrap):
    a = kp_admin(bootstrap)
    yield a
    a.close()


def create_topic(admin, name, partitions=1, configs=None):
    admin.create_topics(
        {name: {"num_partitions": partitions, "replication_factor": 1, "configs": dict(configs or {})}},
        timeout_ms=10000,
    )
    return name


def describe_topic_configs(admin, topic, config_filter="all"):
    res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter=config_filter)
    return res["topic"][topic]


def produce(bootstrap, topic, records, **producer_conf):
    """records: list of send() kwargs. Returns RecordMetadata list."""
    p = kp_producer(bootstrap, **producer_conf)
    try:
        futures = [p.send(topic, **rec) for rec in records]
        p.flush(timeout=20)
        return [f.get(timeout=20) for f in futures]
    finally:
        p.close(timeout=5)


def read(bootstrap, topic, n, partition=0, offset=0, **consumer_conf):
    c = kp_consumer(bootstrap, **consumer_conf)
    try:
        tp = TopicPartition(topic, partition)
        c.assign([tp])
        c.seek(tp, offset)
        recs = kp_consume(c, n)
        extra = c.poll(timeout_ms=300)
        assert not any(extra.values()), f"unexpected extra records: {extra}"
        return recs
    finally:
        c.close(autocommit=False)


# ---------------------------------------------------------------------------
# Topic administration
# ---------------------------------------------------------------------------
def test_create_topic_with_configs_and_delete(admin, topic):
    configs = {"retention.ms": "7200000", "max.message.bytes": "2000000"}
    create_topic(admin, topic, partitions=4, configs=configs)
    assert topic in admin.list_topics()
    [desc] = admin.describe_topics([topic])
    assert desc["error_code"] == 0
    assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1, 2, 3]

    described = describe_topic_configs(admin, topic, config_filter="modified")
    assert {k: described[k]["value"] for k in configs} == configs
    assert described["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"

    result = admin.delete_topics([topic], timeout_ms=10000)
    assert [t["error_code"] for t in result["topics"]] == [0]
    wait_until(lambda: topic not in admin.list_topics(), timeout=10, what="topic deletion")


def test_create_topic_with_broker_defaults(admin, topic):
    # num_partitions / replication_factor = -1: the broker picks (default 1).
    admin.create_topics([topic], timeout_ms=10000)
    [desc] = admin.describe_topics([topic])
    assert len(desc["partitions"]) == 1
    assert [len(p["replica_nodes"]) for p in desc["partitions"]] == [1]


def test_create_existing_topic_raises_topic_already_exists(admin, topic):
    create_topic(admin, topic)
    with pytest.raises(Errors.TopicAlreadyExistsError):
        create_topic(admin, topic)


def test_invalid_topic_name_rejected(admin):
    bad = "invalid topic name!"
    with pytest.raises(Errors.InvalidTopicError):
        create_topic(admin, bad)
    assert bad not in admin.list_topics()


def test_unknown_topic_config_rejected(admin, topic):
    with pytest.raises(Errors.InvalidConfigurationError):
        create_topic(admin, topic, configs={"not.a.real.config": "x"})
    assert topic not in admin.list_topics()


def test_create_partitions_visible_in_metadata(admin, topic):
    create_topic(admin, topic, partitions=1)
    admin.create_partitions({topic: 3}, timeout_ms=10000)

    def count():
        [desc] = admin.describe_topics([topic])
        return len(desc["partitions"])

    wait_until(lambda: count() == 3, timeout=10, what="3 partitions")
    with pytest.raises(Errors.InvalidPartitionsError):
        admin.create_partitions({topic: 2}, timeout_ms=10000)


def test_alter_configs_shows_in_describe(admin, topic):
    create_topic(admin, topic)
    res = admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "123456", "flush.messages": "1000"})],
        incremental=False,
    )
    assert res["topic"][topic] == "OK", res
    described = describe_topic_configs(admin, topic)
    assert described["retention.ms"]["value"] == "123456"
    assert described["flush.messages"]["value"] == "1000"
    assert described["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"


def test_incremental_alter_configs_shows_in_describe(admin, topic):
    create_topic(admin, topic, configs={"retention.bytes": "999999"})
    res = admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.bytes": "2097152"})],
        incremental=True,
    )
    assert res["topic"][topic] == "OK", res
    described = describe_topic_configs(admin, topic, config_filter="modified")
    assert described["segment.bytes"]["value"] == "2097152"
    assert described["retention.bytes"]["value"] == "999999"


def test_log_append_time_topic(admin, bootstrap, topic):
    create_topic(admin, topic, configs={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    produce(bootstrap, topic, [{"value": b"x", "timestamp_ms": 1_600_000_000_000}])
    [r] = read(bootstrap, topic, 1)
    assert r.timestamp_type == 1  # LogAppendTime
    assert r.timestamp >= before - 1000


def test_fetch_progress_with_small_max_partition_fetch_bytes(admin, bootstrap, topic):
    create_topic(admin, topic)
    values = [bytes([97 + i]) * 30_000 for i in range(4)]
    produce(bootstrap, topic, [{"value": v} for v in values], linger_ms=0)
    recs = read(bootstrap, topic, 4, max_partition_fetch_bytes=1024, fetch_max_bytes=1024)
    assert [r.value for r in recs] == values


def test_describe_cluster_lists_the_broker(admin, bootstrap):
    desc = admin.describe_cluster()
    assert len(desc["brokers"]) == 1
    host, port = bootstrap.rsplit(":", 1)
    b = desc["brokers"][0]
    assert (b["host"], b["port"]) == (host, int(port))


# ---------------------------------------------------------------------------
# Produce / consume
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_produce_acks_and_consume_back(admin, bootstrap, topic, acks):
    create_topic(admin, topic)
    records = [
        {"key": b"k%d" % i, "value": b"v%d" % i, "headers": [("h", b"%d" % i)]} for i in range(10)
    ]
    metas = produce(bootstrap, topic, records, acks=acks)
    if acks != 0:
        assert [m.offset for m in metas] == list(range(10))
    recs = read(bootstrap, topic, 10)
    assert [r.offset for r in recs] == list(range(10))
    assert [(r.key, r.value) for r in recs] == [(rec["key"], rec["value"]) for rec in records]
    assert [list(r.headers) for r in recs] == [rec["headers"] for rec in records]


def test_headers_roundtrip(admin, bootstrap, topic):
    create_topic(admin, topic)
    headers = [("a", b"1"), ("b", b""), ("a", b"2")]
    produce(bootstrap, topic, [{"key": b"k", "value": b"v", "headers": headers}])
    [r] = read(bootstrap, topic, 1)
    assert list(r.headers) == headers


def test_null_key_and_null_value(admin, bootstrap, topic):
    create_topic(admin, topic)
    # kafka-python refuses key=None together with value=None client-side
    # ("Need at least one: key or value"); confluent-kafka covers that case.
    records = [{"key": None, "value": b"no-key"}, {"key": b"tomb", "value": None}, {"key": b"", "value": b""}]
    produce(bootstrap, topic, records)
    recs = read(bootstrap, topic, 3)
    assert [(r.key, r.value) for r in recs] == [(None, b"no-key"), (b"tomb", None), (b"", b"")]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_codec_roundtrip(admin, bootstrap, topic, codec):
    available, reason = CODEC_AVAILABLE[codec]
    if not available:
        pytest.skip(f"kafka-python cannot use {codec}: {reason} (covered by the confluent-kafka and kcat tests)")
    create_topic(admin, topic)
    records = [{"key": b"k%d" % i, "value": (b"%s-%d " % (codec.encode(), i)) * 30} for i in range(30)]
    metas = produce(bootstrap, topic, records, compression_type=codec, linger_ms=50)
    assert sorted(m.offset for m in metas) == list(range(30))
    recs = read(bootstrap, topic, 30)
    assert [(r.offset, r.key, r.value) for r in recs] == [(i, rec["key"], rec["value"]) for i, rec in enumerate(records)]


def test_one_mib_records(admin, bootstrap, topic):
    create_topic(admin, topic, configs={"max.message.bytes": str(4 * MIB)})
    values = [bytes([65 + i]) * MIB for i in range(2)]
    produce(
        bootstrap,
        topic,
        [{"key": b"big-%d" % i, "value": v} for i, v in enumerate(values)],
        max_request_size=4 * MIB,
        linger_ms=0,
    )
    recs = read(bootstrap, topic, 2, max_partition_fetch_bytes=4 * MIB, fetch_max_bytes=8 * MIB)
    assert [r.key for r in recs] == [b"big-0", b"big-1"]
    assert [r.value for r in recs] == values


def test_hundred_partitions_produce_and_read_each(admin, bootstrap, topic):
    n = 100
    create_topic(admin, topic, partitions=n)
    metas = produce(bootstrap, topic, [{"partition": p, "value": b"part-%d" % p} for p in range(n)])
    assert sorted((m.partition, m.offset) for m in metas) == [(p, 0) for p in range(n)]

    c = kp_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(n)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        recs = kp_consume(c, n, timeout=30)
        assert sorted((r.partition, r.offset, r.value) for r in recs) == [(p, 0, b"part-%d" % p) for p in range(n)]
        ends = c.end_offsets(tps)
        assert set(ends.values()) == {1}
    finally:
        c.close(autocommit=False)


def test_consume_from_earliest_and_latest(admin, bootstrap, topic):
    create_topic(admin, topic)
    produce(bootstrap, topic, [{"value": b"old-%d" % i} for i in range(4)])
    tp = TopicPartition(topic, 0)
    c = kp_consumer(bootstrap)
    try:
        c.assign([tp])
        c.seek_to_beginning(tp)
        assert c.position(tp) == 0
        assert [r.value for r in kp_consume(c, 4)] == [b"old-%d" % i for i in range(4)]

        c.seek_to_end(tp)
        assert c.position(tp) == 4
        produce(bootstrap, topic, [{"value": b"new-%d" % i} for i in range(2)])
        recs = kp_consume(c, 2)
        assert [(r.offset, r.value) for r in recs] == [(4, b"new-0"), (5, b"new-1")]
    finally:
        c.close(autocommit=False)


def test_beginning_and_end_offsets(admin, bootstrap, topic):
    create_topic(admin, topic, partitions=2)
    produce(bootstrap, topic, [{"partition": 1, "value": b"x%d" % i} for i in range(7)])
    c = kp_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        assert c.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
        assert c.end_offsets(tps) == {tps[0]: 0, tps[1]: 7}
    finally:
        c.close(autocommit=False)


def test_offsets_for_times_and_consume_from_timestamp(admin, bootstrap, topic):
    create_topic(admin, topic)
    base = int(time.time() * 1000) - 600_000
    stamps = [base + 100 * i for i in range(8)]
    produce(bootstrap, topic, [{"value": b"t%d" % i, "timestamp_ms": ts} for i, ts in enumerate(stamps)])
    tp = TopicPartition(topic, 0)
    c = kp_consumer(bootstrap)
    try:
        res = c.offsets_for_times({tp: stamps[3]})
        assert res[tp].offset == 3 and res[tp].timestamp == stamps[3]
        res = c.offsets_for_times({tp: stamps[3] + 50})
        assert res[tp].offset == 4 and res[tp].timestamp == stamps[4]
        res = c.offsets_for_times({tp: stamps[-1] + 1})
        assert res[tp] is None

        start = c.offsets_for_times({tp: stamps[5]})[tp].offset
        c.assign([tp])
        c.seek(tp, start)
        recs = kp_consume(c, 3)
        assert [(r.value, r.timestamp) for r in recs] == [(b"t%d" % i, stamps[i]) for i in (5, 6, 7)]
        assert all(r.timestamp_type == 0 for r in recs)  # CreateTime
    finally:
        c.close(autocommit=False)


def test_list_partition_offsets_admin(admin, bootstrap, topic):
    create_topic(admin, topic)
    base = int(time.time() * 1000) - 600_000
    stamps = [base + 5, base + 90, base + 40]
    produce(bootstrap, topic, [{"value": b"r%d" % i, "timestamp_ms": ts} for i, ts in enumerate(stamps)])
    tp = TopicPartition(topic, 0)
    got = {}
    for name, spec in [("earliest", OffsetSpec.EARLIEST), ("latest", OffsetSpec.LATEST), ("max", OffsetSpec.MAX_TIMESTAMP)]:
        got[name] = admin.list_partition_offsets({tp: spec})[tp]
    assert got["earliest"].offset == 0
    assert got["latest"].offset == 3
    assert (got["max"].offset, got["max"].timestamp) == (1, base + 90)
