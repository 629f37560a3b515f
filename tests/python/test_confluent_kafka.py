"""confluent-kafka (librdkafka) against sluice-broker.

All consumers use assign() with explicit offsets: the broker has no
consumer-group coordinator yet."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from sluice_testlib import (
    ck_admin,
    ck_assert_no_more,
    ck_consume,
    ck_consumer,
    ck_create_topic,
    ck_produce_all,
    ck_producer,
    unique_topic,
    wait_until,
)

T = 15.0  # seconds, per admin/client operation

MIB = 1024 * 1024


def topic_names(bootstrap):
    md = ck_admin(bootstrap).list_topics(timeout=T)
    return set(md.topics)


def partition_count(bootstrap, topic):
    md = ck_admin(bootstrap).list_topics(timeout=T)
    assert topic in md.topics, f"{topic} missing from metadata: {sorted(md.topics)}"
    assert md.topics[topic].error is None, md.topics[topic].error
    return len(md.topics[topic].partitions)


def read_all(bootstrap, topic, n, partition=0, offset=OFFSET_BEGINNING, **consumer_conf):
    c = ck_consumer(bootstrap, **consumer_conf)
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        msgs = ck_consume(c, n)
        ck_assert_no_more(c, wait=0.5)
        return msgs
    finally:
        c.close()


def describe_topic_configs(bootstrap, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    admin = ck_admin(bootstrap)  # must outlive the future
    futs = admin.describe_configs([res], request_timeout=T)
    return futs[res].result(timeout=T)


# ---------------------------------------------------------------------------
# Topic administration
# ---------------------------------------------------------------------------
def test_create_topic_with_configs_and_delete(bootstrap, topic):
    admin = ck_admin(bootstrap)
    configs = {"retention.ms": "3600000", "segment.bytes": "1048576", "cleanup.policy": "delete"}
    futs = admin.create_topics(
        [NewTopic(topic, num_partitions=3, replication_factor=1, config=configs)],
        operation_timeout=T,
        request_timeout=T,
    )
    assert futs[topic].result(timeout=T) is None

    md = admin.list_topics(timeout=T)
    assert topic in md.topics
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    for p in md.topics[topic].partitions.values():
        assert p.leader == 0 or p.leader in md.brokers, f"partition leader {p.leader} not a broker"
        assert p.error is None

    described = describe_topic_configs(bootstrap, topic)
    for k, v in configs.items():
        assert described[k].value == v, f"{k}: {described[k].value!r} != {v!r}"
    assert described["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not described["retention.ms"].is_default

    futs = admin.delete_topics([topic], operation_timeout=T, request_timeout=T)
    assert futs[topic].result(timeout=T) is None
    wait_until(lambda: topic not in topic_names(bootstrap), timeout=10, what="topic to disappear from metadata")


def test_recreate_deleted_topic_starts_empty(bootstrap, topic):
    ck_create_topic(bootstrap, topic, partitions=1)
    p = ck_producer(bootstrap)
    ck_produce_all(p, topic, [{"value": b"old-%d" % i} for i in range(3)])
    admin = ck_admin(bootstrap)
    admin.delete_topics([topic], operation_timeout=T)[topic].result(timeout=T)
    wait_until(lambda: topic not in topic_names(bootstrap), timeout=10, what="topic deletion")

    ck_create_topic(bootstrap, topic, partitions=2)
    assert partition_count(bootstrap, topic) == 2
    c = ck_consumer(bootstrap)
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=T)
        assert (lo, hi) == (0, 0), "recreated topic must not keep the deleted topic's records"
    finally:
        c.close()
    p = ck_producer(bootstrap)
    [m] = ck_produce_all(p, topic, [{"value": b"new", "partition": 0}])
    assert m.offset() == 0


def test_create_existing_topic_fails_with_topic_already_exists(bootstrap, topic):
    ck_create_topic(bootstrap, topic, partitions=1)
    admin = ck_admin(bootstrap)  # must outlive the future
    futs = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)], operation_timeout=T
    )
    with pytest.raises(KafkaException) as ei:
        futs[topic].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS


@pytest.mark.parametrize("bad_name", ["bad name with spaces", "bad/slash", "..", "x" * 250])
def test_invalid_topic_name_rejected(bootstrap, bad_name):
    admin = ck_admin(bootstrap)  # must outlive the future
    futs = admin.create_topics(
        [NewTopic(bad_name, num_partitions=1, replication_factor=1)], operation_timeout=T
    )
    with pytest.raises(KafkaException) as ei:
        futs[bad_name].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.TOPIC_EXCEPTION  # INVALID_TOPIC_EXCEPTION (17)
    assert bad_name not in topic_names(bootstrap)


def test_unknown_topic_config_rejected_with_invalid_config(bootstrap, topic):
    admin = ck_admin(bootstrap)  # must outlive the future
    futs = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1, config={"no.such.config": "1"})],
        operation_timeout=T,
    )
    with pytest.raises(KafkaException) as ei:
        futs[topic].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert topic not in topic_names(bootstrap)


def test_create_partitions_visible_in_metadata(bootstrap, topic):
    ck_create_topic(bootstrap, topic, partitions=2)
    admin = ck_admin(bootstrap)
    futs = admin.create_partitions([NewPartitions(topic, 5)], operation_timeout=T, request_timeout=T)
    assert futs[topic].result(timeout=T) is None
    wait_until(lambda: partition_count(bootstrap, topic) == 5, timeout=10, what="5 partitions in metadata")

    # The new partitions are usable.
    p = ck_producer(bootstrap)
    msgs = ck_produce_all(p, topic, [{"value": b"p4", "partition": 4}])
    assert (msgs[0].partition(), msgs[0].offset()) == (4, 0)

    # Shrinking is not allowed in Kafka.
    futs = admin.create_partitions([NewPartitions(topic, 3)], operation_timeout=T)
    with pytest.raises(KafkaException) as ei:
        futs[topic].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.INVALID_PARTITIONS


def test_describe_cluster_reports_one_broker(bootstrap):
    admin = ck_admin(bootstrap)
    desc = admin.describe_cluster(request_timeout=T).result(timeout=T)
    assert len(desc.nodes) == 1, desc.nodes
    node = desc.nodes[0]
    host, port = bootstrap.rsplit(":", 1)
    assert (node.host, node.port) == (host, int(port))
    assert desc.controller is not None and desc.controller.id == node.id
    assert desc.cluster_id, "cluster id should be non-empty"


def test_alter_configs_shows_in_describe(bootstrap, topic):
    ck_create_topic(bootstrap, topic, config={"retention.ms": "86400000"})
    admin = ck_admin(bootstrap)
    res = ConfigResource(
        ResourceType.TOPIC, topic, set_config={"retention.bytes": "1048576", "max.message.bytes": "500000"}
    )
    futs = admin.alter_configs([res], request_timeout=T)
    futs[res].result(timeout=T)

    described = describe_topic_configs(bootstrap, topic)
    assert described["retention.bytes"].value == "1048576"
    assert described["max.message.bytes"].value == "500000"
    assert described["retention.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # AlterConfigs (non-incremental) replaces the whole set: retention.ms is
    # back to its default.
    assert described["retention.ms"].value != "86400000"
    assert described["retention.ms"].is_default


def test_incremental_alter_configs_set_and_delete(bootstrap, topic):
    ck_create_topic(bootstrap, topic, config={"retention.ms": "86400000"})
    admin = ck_admin(bootstrap)
    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("segment.ms", "600000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    admin.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    described = describe_topic_configs(bootstrap, topic)
    assert described["segment.ms"].value == "600000"
    assert described["message.timestamp.type"].value == "LogAppendTime"
    assert described["segment.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # Untouched override survives an incremental alter.
    assert described["retention.ms"].value == "86400000"

    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)],
    )
    admin.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    described = describe_topic_configs(bootstrap, topic)
    assert described["retention.ms"].is_default
    assert described["retention.ms"].value != "86400000"
    assert described["segment.ms"].value == "600000"


def test_incremental_alter_unknown_config_rejected(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    admin = ck_admin(bootstrap)
    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("bogus.setting", "1", incremental_operation=AlterConfigOpType.SET)],
    )
    with pytest.raises(KafkaException) as ei:
        admin.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.INVALID_CONFIG


# ---------------------------------------------------------------------------
# Produce / consume
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_acks_and_consume_back(bootstrap, topic, acks):
    ck_create_topic(bootstrap, topic)
    p = ck_producer(bootstrap, acks=acks)
    records = [
        {"key": b"k%d" % i, "value": b"v%d" % i, "headers": [("h", b"%d" % i)]} for i in range(10)
    ]
    delivered = ck_produce_all(p, topic, records)
    if acks != "0":
        assert [m.offset() for m in delivered] == list(range(10))

    msgs = read_all(bootstrap, topic, 10)
    assert [m.offset() for m in msgs] == list(range(10))
    assert [(m.key(), m.value()) for m in msgs] == [(r["key"], r["value"]) for r in records]
    assert [m.headers() for m in msgs] == [r["headers"] for r in records]


def test_headers_including_duplicate_keys_roundtrip(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    headers = [("dup", b"first"), ("other", b"x"), ("dup", b"second"), ("empty", b""), ("nullv", None),
               ("ключ-🔑", b"\x00\xff\x00binary")]
    ck_produce_all(ck_producer(bootstrap), topic, [{"key": b"k", "value": b"v", "headers": headers}])
    [m] = read_all(bootstrap, topic, 1)
    assert m.headers() == headers


def test_null_key_and_null_value(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    records = [
        {"key": None, "value": b"value-without-key"},
        {"key": b"tombstone", "value": None},
        {"key": None, "value": None},
        {"key": b"", "value": b""},
    ]
    ck_produce_all(ck_producer(bootstrap), topic, records)
    msgs = read_all(bootstrap, topic, 4)
    assert [(m.key(), m.value()) for m in msgs] == [
        (None, b"value-without-key"),
        (b"tombstone", None),
        (None, None),
        (b"", b""),
    ]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_codec_roundtrip(bootstrap, topic, codec):
    ck_create_topic(bootstrap, topic)
    p = ck_producer(bootstrap, **{"compression.type": codec, "linger.ms": 50})
    records = [
        {"key": b"key-%03d" % i, "value": (b"%s payload %d " % (codec.encode(), i)) * 20, "headers": [("i", b"%d" % i)]}
        for i in range(50)
    ]
    delivered = ck_produce_all(p, topic, records)
    assert sorted(m.offset() for m in delivered) == list(range(50))
    msgs = read_all(bootstrap, topic, 50)
    assert [m.offset() for m in msgs] == list(range(50))
    assert [(m.key(), m.value(), m.headers()) for m in msgs] == [
        (r["key"], r["value"], r["headers"]) for r in records
    ]


def test_one_mib_records(bootstrap, topic):
    ck_create_topic(bootstrap, topic, config={"max.message.bytes": str(4 * MIB)})
    p = ck_producer(bootstrap, **{"message.max.bytes": 4 * MIB, "linger.ms": 0})
    values = [bytes([i]) * MIB for i in range(3)]
    ck_produce_all(p, topic, [{"key": b"big-%d" % i, "value": v} for i, v in enumerate(values)], timeout=30)
    msgs = read_all(
        bootstrap,
        topic,
        3,
        **{
            "max.partition.fetch.bytes": 4 * MIB,
            "fetch.max.bytes": 8 * MIB,
            "receive.message.max.bytes": 16 * MIB,
        },
    )
    assert [m.key() for m in msgs] == [b"big-0", b"big-1", b"big-2"]
    for m, v in zip(msgs, values):
        assert len(m.value()) == MIB
        assert m.value() == v


def test_record_larger_than_topic_max_message_bytes_rejected(bootstrap, topic):
    ck_create_topic(bootstrap, topic, config={"max.message.bytes": "10000"})
    p = ck_producer(bootstrap, **{"linger.ms": 0, "message.send.max.retries": 0})
    errors = []
    p.produce(topic, value=b"x" * 50000, on_delivery=lambda err, msg: errors.append(err))
    p.flush(T)
    assert len(errors) == 1 and errors[0] is not None, "oversized record must not be accepted"
    assert errors[0].code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE), errors[0]
    # Nothing was appended.
    c = ck_consumer(bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=T) == (0, 0)
    finally:
        c.close()


def test_concurrent_producers_get_unique_contiguous_offsets(bootstrap, topic):
    import threading

    ck_create_topic(bootstrap, topic)
    results, failures = {}, []

    def run(worker):
        try:
            p = ck_producer(bootstrap, **{"linger.ms": 1, "acks": "all"})
            msgs = ck_produce_all(p, topic, [{"key": b"w%d" % worker, "value": b"w%d-%d" % (worker, i)} for i in range(50)])
            results[worker] = msgs
        except Exception as e:  # surfaced below
            failures.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not failures, failures
    offsets = sorted(m.offset() for msgs in results.values() for m in msgs)
    assert offsets == list(range(200)), "offsets must be unique and contiguous"
    for msgs in results.values():
        own = [m.offset() for m in msgs]
        assert own == sorted(own), "one producer's records keep their order"
    consumed = read_all(bootstrap, topic, 200)
    by_offset = {m.offset(): m.value() for msgs in results.values() for m in msgs}
    assert {m.offset(): m.value() for m in consumed} == by_offset


def test_hundred_partitions_produce_and_read_each(bootstrap, topic):
    n = 100
    ck_create_topic(bootstrap, topic, partitions=n)
    assert partition_count(bootstrap, topic) == n
    p = ck_producer(bootstrap)
    records = []
    for part in range(n):
        for j in range(2):
            records.append({"partition": part, "key": b"p%d" % part, "value": b"p%d-r%d" % (part, j)})
    delivered = ck_produce_all(p, topic, records, timeout=30)
    assert all(m.offset() in (0, 1) for m in delivered)

    c = ck_consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, part, OFFSET_BEGINNING) for part in range(n)])
        msgs = ck_consume(c, 2 * n, timeout=30)
        got = {}
        for m in msgs:
            got.setdefault(m.partition(), []).append((m.offset(), m.value()))
        assert sorted(got) == list(range(n))
        for part in range(n):
            assert got[part] == [(0, b"p%d-r0" % part), (1, b"p%d-r1" % part)], part
        for part in (0, 57, 99):
            assert c.get_watermark_offsets(TopicPartition(topic, part), timeout=T) == (0, 2)
    finally:
        c.close()


def test_consume_from_offset_earliest_and_latest(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    p = ck_producer(bootstrap)
    ck_produce_all(p, topic, [{"value": b"before-%d" % i} for i in range(5)])

    # Specific offset.
    msgs = read_all(bootstrap, topic, 2, offset=3)
    assert [(m.offset(), m.value()) for m in msgs] == [(3, b"before-3"), (4, b"before-4")]

    # Earliest.
    msgs = read_all(bootstrap, topic, 5, offset=OFFSET_BEGINNING)
    assert [m.value() for m in msgs] == [b"before-%d" % i for i in range(5)]

    # Latest: only records produced after the offset was resolved.
    stats = {}
    c = ck_consumer(
        bootstrap,
        **{"auto.offset.reset": "latest", "statistics.interval.ms": 100,
           "stats_cb": lambda js: stats.update(json.loads(js))},
    )
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_END)])

        # Wait until librdkafka resolved OFFSET_END (ListOffsets) and is
        # fetching, as reported by its statistics, before producing.
        def fetching_from_end():
            assert c.poll(0.1) is None
            part = stats.get("topics", {}).get(topic, {}).get("partitions", {}).get("0", {})
            return part.get("fetch_state") == "active" and part.get("next_offset") == 5

        wait_until(fetching_from_end, timeout=10, what="consumer to resolve the latest offset")
        ck_produce_all(p, topic, [{"value": b"after-%d" % i} for i in range(3)])
        msgs = ck_consume(c, 3)
        assert [(m.offset(), m.value()) for m in msgs] == [(5 + i, b"after-%d" % i) for i in range(3)]
        ck_assert_no_more(c, wait=0.5)
    finally:
        c.close()


def test_fetch_beyond_log_end_resets_via_offset_out_of_range(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    ck_produce_all(ck_producer(bootstrap), topic, [{"value": b"r%d" % i} for i in range(5)])
    # Offset 100 does not exist: the broker must answer OFFSET_OUT_OF_RANGE so
    # the client applies auto.offset.reset (earliest) and reads from 0.
    msgs = read_all(bootstrap, topic, 5, offset=100, **{"auto.offset.reset": "earliest"})
    assert [(m.offset(), m.value()) for m in msgs] == [(i, b"r%d" % i) for i in range(5)]

    c = ck_consumer(bootstrap, **{"auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, 0, 100)])
        deadline = time.monotonic() + 10
        err = None
        while err is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error():
                err = m.error()
            elif m is not None:
                raise AssertionError(f"unexpected record at offset {m.offset()}")
        assert err is not None, "no error surfaced for an out-of-range fetch with auto.offset.reset=error"
        assert err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE), err
    finally:
        c.close()


def test_long_poll_fetch_wakes_up_on_produce(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    p = ck_producer(bootstrap, **{"linger.ms": 0})
    ck_produce_all(p, topic, [{"value": b"first"}])
    # A long fetch.wait.max.ms: the broker must answer as soon as data arrives
    # (fetch.min.bytes=1), not at the end of the wait.
    c = ck_consumer(bootstrap, **{"fetch.wait.max.ms": 5000})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        ck_consume(c, 1)
        time.sleep(0.5)  # consumer is now parked in a long-poll fetch
        t0 = time.monotonic()
        ck_produce_all(p, topic, [{"value": b"second"}])
        [m] = ck_consume(c, 1, timeout=10)
        elapsed = time.monotonic() - t0
        assert m.value() == b"second"
        assert elapsed < 2.5, f"long-poll fetch took {elapsed:.2f}s to return new data"
    finally:
        c.close()


def test_offsets_for_times_with_explicit_timestamps(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    base = int(time.time() * 1000) - 3_600_000
    stamps = [base + i * 1000 for i in range(10)]
    ck_produce_all(
        ck_producer(bootstrap), topic, [{"value": b"ts-%d" % i, "timestamp": ts} for i, ts in enumerate(stamps)]
    )
    c = ck_consumer(bootstrap)
    try:
        # Exact hit, in-between, before all, after all.
        queries = {
            stamps[4]: 4,
            stamps[6] + 500: 7,
            base - 10_000: 0,
            stamps[-1] + 1: -1,  # no such record: librdkafka reports OFFSET_END (-1)
        }
        for ts, expected in queries.items():
            [res] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=T)
            assert res.error is None
            assert res.offset == expected, f"timestamp {ts - base:+d}ms: offset {res.offset} != {expected}"

        # Consume from a timestamp.
        [start] = c.offsets_for_times([TopicPartition(topic, 0, stamps[7])], timeout=T)
        c.assign([start])
        msgs = ck_consume(c, 3)
        assert [m.value() for m in msgs] == [b"ts-7", b"ts-8", b"ts-9"]
        assert [m.timestamp() for m in msgs] == [(TIMESTAMP_CREATE_TIME, ts) for ts in stamps[7:]]
    finally:
        c.close()


def test_watermarks_and_list_offsets(bootstrap, topic):
    ck_create_topic(bootstrap, topic, partitions=2)
    base = int(time.time() * 1000) - 60_000
    # Out-of-order timestamps: max timestamp is not the last record.
    stamps = [base + 10, base + 50, base + 20, base + 30]
    ck_produce_all(
        ck_producer(bootstrap),
        topic,
        [{"value": b"r%d" % i, "timestamp": ts, "partition": 0} for i, ts in enumerate(stamps)],
    )
    c = ck_consumer(bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=T) == (0, 4)
        assert c.get_watermark_offsets(TopicPartition(topic, 1), timeout=T) == (0, 0)
    finally:
        c.close()

    admin = ck_admin(bootstrap)
    tp0 = TopicPartition(topic, 0)
    specs = {
        "earliest": OffsetSpec.earliest(),
        "latest": OffsetSpec.latest(),
        "max_timestamp": OffsetSpec.max_timestamp(),
        "for_timestamp": OffsetSpec.for_timestamp(base + 25),
    }
    results = {}
    for name, spec in specs.items():
        futs = admin.list_offsets({tp0: spec}, request_timeout=T)
        results[name] = futs[tp0].result(timeout=T)
    assert results["earliest"].offset == 0
    assert results["latest"].offset == 4
    assert results["max_timestamp"].offset == 1
    assert results["max_timestamp"].timestamp == base + 50
    # First record with timestamp >= base+25 in offset order is offset 1 (base+50).
    assert results["for_timestamp"].offset == 1


def test_log_append_time_topic_overrides_producer_timestamp(bootstrap, topic):
    ck_create_topic(bootstrap, topic, config={"message.timestamp.type": "LogAppendTime"})
    old_ts = int(time.time() * 1000) - 86_400_000
    before = int(time.time() * 1000)
    ck_produce_all(ck_producer(bootstrap), topic, [{"value": b"a", "timestamp": old_ts}])
    after = int(time.time() * 1000)
    [m] = read_all(bootstrap, topic, 1)
    ts_type, ts = m.timestamp()
    assert ts_type == TIMESTAMP_LOG_APPEND_TIME
    assert before - 1000 <= ts <= after + 1000, f"log append time {ts} not in [{before}, {after}]"


def test_produce_to_unknown_partition_fails(bootstrap, topic):
    ck_create_topic(bootstrap, topic, partitions=1)
    p = ck_producer(bootstrap, **{"message.timeout.ms": 3000})
    errors = []
    p.produce(topic, value=b"x", partition=5, on_delivery=lambda err, msg: errors.append(err))
    p.flush(10)
    assert errors and errors[0] is not None
    assert errors[0].code() in (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART), errors[0]


def test_multiple_partitions_keyed_records(bootstrap, topic):
    ck_create_topic(bootstrap, topic, partitions=4)
    p = ck_producer(bootstrap)
    records = [{"key": b"key-%d" % (i % 8), "value": b"v%d" % i} for i in range(40)]
    delivered = ck_produce_all(p, topic, records)
    by_key = {}
    for m in delivered:
        by_key.setdefault(m.key(), set()).add(m.partition())
    assert all(len(parts) == 1 for parts in by_key.values()), "same key must map to one partition"
    c = ck_consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, part, OFFSET_BEGINNING) for part in range(4)])
        msgs = ck_consume(c, 40)
        assert sorted(m.value() for m in msgs) == sorted(r["value"] for r in records)
        for m in msgs:
            assert m.partition() in by_key[m.key()]
    finally:
        c.close()


def test_unique_topic_helper_names_are_valid():
    # Guard for the fixture itself: generated names must be legal topic names.
    name = unique_topic("test_x[param-1]")
    assert all(ch.isalnum() or ch in "._-" for ch in name) and len(name) < 250


# ---------------------------------------------------------------------------
# More admin error paths (Kafka error codes)
# ---------------------------------------------------------------------------
def _create_error(bootstrap, new_topic, **kwargs):
    admin = ck_admin(bootstrap)  # must outlive the future
    futs = admin.create_topics([new_topic], operation_timeout=T, **kwargs)
    try:
        futs[new_topic.topic].result(timeout=T)
    except KafkaException as e:
        return e.args[0].code()
    return None


def test_create_topic_validate_only_does_not_create(bootstrap, topic):
    err = _create_error(bootstrap, NewTopic(topic, num_partitions=2, replication_factor=1), validate_only=True)
    assert err is None
    assert topic not in topic_names(bootstrap)
    # ... but validation still runs.
    err = _create_error(
        bootstrap, NewTopic(topic, num_partitions=1, replication_factor=1, config={"retention.ms": "soon"}),
        validate_only=True,
    )
    assert err == KafkaError.INVALID_CONFIG


def test_create_topic_replication_factor_above_broker_count_rejected(bootstrap, topic):
    err = _create_error(bootstrap, NewTopic(topic, num_partitions=1, replication_factor=3))
    assert err == KafkaError.INVALID_REPLICATION_FACTOR
    assert topic not in topic_names(bootstrap)


def test_create_topic_zero_partitions_rejected(bootstrap, topic):
    err = _create_error(bootstrap, NewTopic(topic, num_partitions=0, replication_factor=1))
    assert err == KafkaError.INVALID_PARTITIONS
    assert topic not in topic_names(bootstrap)


@pytest.mark.parametrize(
    "name,value",
    [("retention.ms", "not-a-number"), ("cleanup.policy", "compact"), ("message.timestamp.type", "WallClock")],
)
def test_invalid_config_values_rejected(bootstrap, topic, name, value):
    err = _create_error(bootstrap, NewTopic(topic, num_partitions=1, replication_factor=1, config={name: value}))
    assert err == KafkaError.INVALID_CONFIG
    assert topic not in topic_names(bootstrap)

    # Same through IncrementalAlterConfigs on an existing topic; nothing changes.
    ck_create_topic(bootstrap, topic)
    admin = ck_admin(bootstrap)
    res = ConfigResource(
        ResourceType.TOPIC, topic, incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)]
    )
    with pytest.raises(KafkaException) as ei:
        admin.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe_topic_configs(bootstrap, topic)[name].is_default


def test_delete_unknown_topic_fails(bootstrap, topic):
    admin = ck_admin(bootstrap)
    futs = admin.delete_topics([topic], operation_timeout=T)
    with pytest.raises(KafkaException) as ei:
        futs[topic].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_describe_configs_unknown_topic_fails(bootstrap, topic):
    admin = ck_admin(bootstrap)
    res = ConfigResource(ResourceType.TOPIC, topic)
    with pytest.raises(KafkaException) as ei:
        admin.describe_configs([res], request_timeout=T)[res].result(timeout=T)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert topic not in topic_names(bootstrap), "DescribeConfigs must not auto-create topics"


def test_describe_configs_lists_all_supported_keys_with_defaults(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    described = describe_topic_configs(bootstrap, topic)
    for key in ["retention.ms", "retention.bytes", "segment.bytes", "segment.ms", "max.message.bytes",
                "min.insync.replicas", "cleanup.policy", "flush.messages", "flush.ms", "message.timestamp.type"]:
        assert key in described, f"{key} missing from DescribeConfigs"
        assert described[key].is_default, key
        assert described[key].source == ConfigSource.DEFAULT_CONFIG.value, key
    assert described["cleanup.policy"].value == "delete"
    assert described["message.timestamp.type"].value == "CreateTime"


# ---------------------------------------------------------------------------
# Fetch sizing and waiting
# ---------------------------------------------------------------------------
def test_fetch_makes_progress_when_batch_exceeds_partition_fetch_limit(bootstrap, topic):
    # KIP-74: the first batch is returned whole even if it is larger than
    # max.partition.fetch.bytes / fetch.max.bytes, so consumers never stall.
    ck_create_topic(bootstrap, topic)
    values = [bytes([97 + i]) * 20_000 for i in range(6)]
    ck_produce_all(ck_producer(bootstrap, **{"linger.ms": 0}), topic, [{"value": v} for v in values])
    msgs = read_all(
        bootstrap, topic, 6, **{"max.partition.fetch.bytes": 1024, "fetch.max.bytes": 1024,
                               "message.max.bytes": 1000, "receive.message.max.bytes": 1_000_000},
    )
    assert [m.value() for m in msgs] == values


def test_fetch_min_bytes_makes_broker_wait(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    p = ck_producer(bootstrap, **{"linger.ms": 0})
    c = ck_consumer(bootstrap, **{"fetch.min.bytes": 100_000, "fetch.wait.max.ms": 1500})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        time.sleep(0.3)
        t0 = time.monotonic()
        ck_produce_all(p, topic, [{"value": b"small"}])
        [m] = ck_consume(c, 1, timeout=10)
        elapsed = time.monotonic() - t0
        assert m.value() == b"small"
        # min bytes never reached: the broker holds the fetch for (about) max wait.
        assert elapsed >= 0.7, f"fetch returned after {elapsed:.2f}s despite fetch.min.bytes=100000"
    finally:
        c.close()


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
def test_log_append_time_with_compressed_batches(bootstrap, topic, codec):
    ck_create_topic(bootstrap, topic, config={"message.timestamp.type": "LogAppendTime"})
    old_ts = 1_600_000_000_000
    before = int(time.time() * 1000)
    ck_produce_all(
        ck_producer(bootstrap, **{"compression.type": codec, "linger.ms": 20}),
        topic,
        [{"value": b"la-%d" % i, "timestamp": old_ts + i} for i in range(5)],
    )
    after = int(time.time() * 1000)
    msgs = read_all(bootstrap, topic, 5)
    assert [m.value() for m in msgs] == [b"la-%d" % i for i in range(5)]
    for m in msgs:
        ts_type, ts = m.timestamp()
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME, (codec, m.timestamp())
        assert before - 1000 <= ts <= after + 1000, (codec, ts)
