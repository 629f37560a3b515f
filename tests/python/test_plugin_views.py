"""Fetch-side filters through views: a topic created with
`sluice.view.of=<source>` and `sluice.fetch.filters=<filter plugins>` shares
the source's partitions; consumers of the view (any client, no change) get
only the records the filters keep, at their stored offsets, and can commit
and seek as usual. Needs the example plugins (`scripts/build-plugins`)."""

import json
import time
import urllib.request

import pytest

from sluice_testlib import (
    REPO_ROOT,
    ck_admin,
    ck_create_topic,
    ck_group_consumer,
    ck_produce_all,
    ck_producer,
    kp_consumer,
    unique_topic,
)

WASM = REPO_ROOT / "plugins" / "examples" / "target" / "wasm32-unknown-unknown" / "release"


def upload(broker, name, kind, path):
    req = urllib.request.Request(
        f"http://{broker.admin_addr}/v1/plugins/{name}?kind={kind}",
        data=path.read_bytes(),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 201
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def filter_plugin(broker):
    path = WASM / "keep_filter.wasm"
    if not path.is_file():
        pytest.fail(f"{path} missing: run scripts/build-plugins")
    upload(broker, "keep-important", "filter", path)
    return "keep-important"


def make_view(bootstrap, filter_plugin, partitions=2):
    source = unique_topic("logs")
    ck_create_topic(bootstrap, source, partitions=partitions)
    view = source + ".important"
    ck_create_topic(
        bootstrap,
        view,
        partitions=partitions,
        config={"sluice.view.of": source, "sluice.fetch.filters": filter_plugin},
    )
    return source, view


def log_records(n, partitions=2):
    # Every third record is an error; the rest are debug noise the filter drops.
    return [
        {
            "partition": i % partitions,
            "key": f"k{i}".encode(),
            "value": json.dumps({"level": "error" if i % 3 == 0 else "debug", "i": i}).encode(),
        }
        for i in range(n)
    ]


def test_view_consumers_get_filtered_records_at_stored_offsets(bootstrap, filter_plugin):
    source, view = make_view(bootstrap, filter_plugin)
    delivered = ck_produce_all(ck_producer(bootstrap, **{"linger.ms": 20}), source, log_records(60))
    stored = {(m.partition(), m.offset()): json.loads(m.value()) for m in delivered}
    expected = {k: v for k, v in stored.items() if v["level"] == "error"}

    c = ck_group_consumer(bootstrap, unique_topic("g"), **{"enable.auto.offset.store": True})
    c.subscribe([view])
    got = {}
    deadline = time.monotonic() + 20
    while len(got) < len(expected) and time.monotonic() < deadline:
        m = c.poll(0.3)
        if m is None or m.error():
            continue
        got[(m.partition(), m.offset())] = json.loads(m.value())
    assert got == expected, "exactly the kept records, each at the offset it was stored at"
    # Commits on the view work like on any topic.
    c.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in c.committed(c.assignment(), timeout=10)}
    assert all(off > 0 for off in committed.values()), committed
    c.close()


def test_view_is_read_with_kafka_python_too(bootstrap, filter_plugin):
    source, view = make_view(bootstrap, filter_plugin, partitions=1)
    ck_produce_all(ck_producer(bootstrap), source, log_records(30, partitions=1))
    from kafka import TopicPartition

    consumer = kp_consumer(bootstrap, consumer_timeout_ms=4000, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(view, 0)])
    values = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert [v["i"] for v in values] == list(range(0, 30, 3))


def test_views_are_read_only_and_keep_the_source_alive(bootstrap, filter_plugin):
    source, view = make_view(bootstrap, filter_plugin, partitions=1)
    errors = []
    p = ck_producer(bootstrap)
    p.produce(view, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(10)
    assert errors and errors[0] is not None and errors[0].name() == "TOPIC_EXCEPTION"
    admin = ck_admin(bootstrap)
    with pytest.raises(Exception, match="(?i)policy"):
        admin.delete_topics([source], operation_timeout=10)[source].result(timeout=15)
    admin.delete_topics([view], operation_timeout=10)[view].result(timeout=15)
    # Deleting the view leaves the source's data alone.
    ck_produce_all(ck_producer(bootstrap), source, log_records(3, partitions=1))
    admin.delete_topics([source], operation_timeout=10)[source].result(timeout=15)


def test_unknown_filter_or_source_is_refused(bootstrap, filter_plugin):
    from confluent_kafka import KafkaException

    source = unique_topic("logs")
    ck_create_topic(bootstrap, source)
    with pytest.raises(KafkaException, match="not uploaded"):
        ck_create_topic(bootstrap, source + ".v", config={"sluice.view.of": source, "sluice.fetch.filters": "nope"})
    with pytest.raises(KafkaException, match="does not exist"):
        ck_create_topic(bootstrap, unique_topic("v"), config={"sluice.view.of": "no-such-topic"})
