"""Broker lifecycle: restart persistence, shutdown, crash survival and
topic auto-creation flags. Each test runs its own broker."""

from __future__ import annotations

import re
import signal
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from sluice_testlib import (
    ck_admin,
    ck_consume,
    ck_consumer,
    ck_create_topic,
    ck_produce_all,
    ck_producer,
    unique_topic,
    wait_until,
)

T = 15.0


def snapshot(bootstrap, topic, partitions, expected):
    """Read `expected` records from all partitions: {(p, offset): (key, value, headers, timestamp)}."""
    c = ck_consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        msgs = ck_consume(c, expected)
        marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=T) for p in range(partitions)}
        return {(m.partition(), m.offset()): (m.key(), m.value(), m.headers(), m.timestamp()) for m in msgs}, marks
    finally:
        c.close()


def produce_sample(bootstrap, topic, n, tag):
    records = [
        {
            "partition": i % 2,
            "key": b"%s-k%d" % (tag, i),
            "value": b"%s-v%d-" % (tag, i) + bytes(range(256)),
            "headers": [("n", b"%d" % i), ("n", b"dup")],
            "timestamp": 1_700_000_000_000 + i,
        }
        for i in range(n)
    ]
    delivered = ck_produce_all(ck_producer(bootstrap, acks="all", **{"compression.type": "lz4"}), topic, records)
    return {(m.partition(), m.offset()) for m in delivered}


def test_sigterm_shuts_down_cleanly(broker_factory):
    b = broker_factory()
    rc = b.stop(signal.SIGTERM, timeout=10)
    assert rc == 0, f"broker exited with {rc} on SIGTERM (expected a clean 0)"


def test_restart_keeps_topics_records_and_offsets(broker_factory):
    b = broker_factory()
    topic = unique_topic("persist")
    ck_create_topic(b.kafka_addr, topic, partitions=2, config={"retention.ms": "604800000"})
    written = produce_sample(b.kafka_addr, topic, 20, b"a")
    before, marks_before = snapshot(b.kafka_addr, topic, 2, 20)
    assert set(before) == written
    assert marks_before == {0: (0, 10), 1: (0, 10)}

    # On-disk layout: DIR/<topic>-<partition>/<20-digit base offset>.log
    for p in range(2):
        pdir = b.data_dir / f"{topic}-{p}"
        assert pdir.is_dir(), f"missing partition dir {pdir}"
        logs = sorted(x.name for x in pdir.iterdir() if x.suffix == ".log")
        assert logs and all(re.fullmatch(r"\d{20}\.log", n) for n in logs), logs
        assert logs[0] == "0" * 20 + ".log"

    rc = b.stop(signal.SIGTERM)
    assert rc == 0, f"unclean exit on SIGTERM: {rc}"
    b.start()

    md = ck_admin(b.kafka_addr).list_topics(timeout=T)
    assert topic in md.topics, sorted(md.topics)
    assert len(md.topics[topic].partitions) == 2

    after, marks_after = snapshot(b.kafka_addr, topic, 2, 20)
    assert after == before
    assert marks_after == marks_before

    # Topic configs persist too.
    from confluent_kafka.admin import ConfigResource, ResourceType

    res = ConfigResource(ResourceType.TOPIC, topic)
    admin = ck_admin(b.kafka_addr)  # must outlive the future
    cfg = admin.describe_configs([res], request_timeout=T)[res].result(timeout=T)
    assert cfg["retention.ms"].value == "604800000"

    # Appends continue from the old log end.
    more = ck_produce_all(ck_producer(b.kafka_addr), topic, [{"partition": 0, "value": b"after-restart"}])
    assert more[0].offset() == 10


def test_acked_records_survive_sigkill(broker_factory):
    b = broker_factory()
    topic = unique_topic("crash")
    ck_create_topic(b.kafka_addr, topic, partitions=2)
    written = produce_sample(b.kafka_addr, topic, 10, b"c")
    b.kill()  # no graceful shutdown: acked data must already be in the OS's hands
    b.start()
    after, marks = snapshot(b.kafka_addr, topic, 2, 10)
    assert set(after) == written
    assert marks == {0: (0, 5), 1: (0, 5)}


def test_deleted_topic_stays_deleted_after_restart(broker_factory):
    b = broker_factory(extra_args=["--auto-create-topics", "false"])
    topic = unique_topic("gone")
    ck_create_topic(b.kafka_addr, topic)
    ck_produce_all(ck_producer(b.kafka_addr), topic, [{"value": b"x"}])
    admin = ck_admin(b.kafka_addr)  # must outlive the future
    admin.delete_topics([topic], operation_timeout=T)[topic].result(timeout=T)
    # The partition's files go too (Kafka renames then removes them).
    wait_until(lambda: not (b.data_dir / f"{topic}-0").exists(), timeout=10, what="partition dir removal")
    b.restart()
    md = ck_admin(b.kafka_addr).list_topics(timeout=T)
    assert topic not in md.topics


def test_auto_create_topics_on_metadata_by_default(broker_factory):
    b = broker_factory()
    topic = unique_topic("auto")
    # The producer's metadata request for an unknown topic creates it.
    msgs = ck_produce_all(ck_producer(b.kafka_addr), topic, [{"value": b"auto"}])
    assert (msgs[0].partition(), msgs[0].offset()) == (0, 0)
    md = ck_admin(b.kafka_addr).list_topics(timeout=T)
    assert topic in md.topics
    assert len(md.topics[topic].partitions) == 1


def test_auto_create_topics_disabled(broker_factory):
    b = broker_factory(extra_args=["--auto-create-topics", "false"])
    topic = unique_topic("noauto")
    p = ck_producer(b.kafka_addr, **{"message.timeout.ms": 3000, "topic.metadata.propagation.max.ms": 1000})
    errors = []
    p.produce(topic, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(10)
    assert errors and errors[0] is not None, "produce to a missing topic must fail when auto-create is off"
    assert errors[0].code() in (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._MSG_TIMED_OUT)
    md = ck_admin(b.kafka_addr).list_topics(timeout=T)
    assert topic not in md.topics

    # Explicit creation still works.
    ck_create_topic(b.kafka_addr, topic)
    wait_until(lambda: topic in ck_admin(b.kafka_addr).list_topics(timeout=T).topics, timeout=5)


def test_two_brokers_on_ephemeral_ports_are_independent(broker_factory):
    a = broker_factory(name="a")
    b = broker_factory(name="b")
    assert a.kafka_addr != b.kafka_addr and a.admin_addr != b.admin_addr
    topic = unique_topic("only-a")
    ck_create_topic(a.kafka_addr, topic)
    assert topic not in ck_admin(b.kafka_addr).list_topics(timeout=T).topics


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints_after_restart(broker_factory, path):
    b = broker_factory()
    b.restart()
    assert b.http_get(path)[0] == 200


def test_small_segments_roll_and_read_across_segments(broker_factory):
    b = broker_factory()
    topic = unique_topic("segments")
    ck_create_topic(b.kafka_addr, topic, config={"segment.bytes": "4096"})
    records = [{"key": b"k%d" % i, "value": b"%04d" % i + b"." * 300} for i in range(60)]
    # linger 0 + one-by-one flush: many small batches, so segments must roll.
    p = ck_producer(b.kafka_addr, **{"linger.ms": 0})
    for i in range(0, 60, 5):
        ck_produce_all(p, topic, records[i:i + 5])

    pdir = b.data_dir / f"{topic}-0"
    logs = sorted(x.name for x in pdir.iterdir() if x.suffix == ".log")
    assert len(logs) >= 3, f"expected several segments with segment.bytes=4096, got {logs}"
    assert all(re.fullmatch(r"\d{20}\.log", n) for n in logs), logs
    bases = [int(n[:20]) for n in logs]
    assert bases[0] == 0 and bases == sorted(set(bases))
    for x in pdir.iterdir():
        if x.suffix == ".log":
            # A segment may exceed segment.bytes only by one batch.
            assert x.stat().st_size <= 4096 + 5 * 400, (x.name, x.stat().st_size)

    # Everything reads back in order across segment boundaries ...
    got, marks = snapshot(b.kafka_addr, topic, 1, 60)
    assert [got[(0, i)][:2] for i in range(60)] == [(r["key"], r["value"]) for r in records]
    assert marks[0] == (0, 60)
    # ... including starting exactly at, and just after, a segment base offset.
    for start in (bases[1], bases[-1] + 1 if bases[-1] + 1 < 60 else bases[-1]):
        c = ck_consumer(b.kafka_addr)
        try:
            c.assign([TopicPartition(topic, 0, start)])
            msgs = ck_consume(c, 60 - start)
            assert [m.offset() for m in msgs] == list(range(start, 60))
        finally:
            c.close()

    # And survives a restart.
    b.restart()
    again, _ = snapshot(b.kafka_addr, topic, 1, 60)
    assert again == got


def test_time_retention_deletes_old_sealed_segments(broker_factory):
    b = broker_factory(extra_args=["--retention-check-interval-ms", "200"])
    topic = unique_topic("retention")
    ck_create_topic(b.kafka_addr, topic, config={"segment.bytes": "2048", "retention.ms": "60000"})
    old_ts = int(time.time() * 1000) - 3_600_000
    p = ck_producer(b.kafka_addr, **{"linger.ms": 0})
    for i in range(30):
        ck_produce_all(p, topic, [{"value": b"old-%02d" % i + b"." * 300, "timestamp": old_ts + i}])
    new = ck_produce_all(p, topic, [{"value": b"fresh"}])
    assert new[0].offset() == 30

    c = ck_consumer(b.kafka_addr)
    try:
        tp = TopicPartition(topic, 0)
        lo, hi = wait_until(
            lambda: (lambda w: w if w[0] > 0 else None)(c.get_watermark_offsets(tp, timeout=T)),
            timeout=10,
            what="log start offset to advance after retention",
        )
        assert hi == 31
        assert 0 < lo <= 30, "retention may delete only sealed segments; the active one holds offset 30"
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        msgs = ck_consume(c, 31 - lo)
        assert msgs[0].offset() == lo and msgs[-1].value() == b"fresh"
    finally:
        c.close()
