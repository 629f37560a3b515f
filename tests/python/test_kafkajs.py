"""KafkaJS (pure JavaScript) against one broker and a three-broker cluster:
a group consumer and a transactional producer in a consume-transform-produce
loop (tests/js/transactions.mjs, run with node). The committed half of the
output is what read_committed consumers see, the aborted half only
read_uncommitted ones, and the group's offsets are the committed
transaction's. node and kafkajs come from scripts/install-test-deps.sh."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, ConsumerGroupTopicPartitions, TopicPartition

from sluice_testlib import (
    GROUP_BROKER_ARGS,
    ck_admin,
    ck_consume,
    ck_consumer,
    ck_create_topic,
    ck_produce_all,
    ck_producer,
)

SLUICE_BROKER_ARGS = GROUP_BROKER_ARGS  # picked up by conftest's module broker
SLUICE_TOPOLOGIES = ("one", "three")

JS_DIR = Path(__file__).resolve().parent.parent / "js"


def node():
    path = shutil.which("node")
    if path is None or not (JS_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail("node and tests/js/node_modules/kafkajs are needed: run scripts/install-test-deps.sh",
                    pytrace=False)
    return path


def read(bootstrap, topic, partitions, n, isolation):
    c = ck_consumer(bootstrap, **{"isolation.level": isolation})
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        msgs = ck_consume(c, n, timeout=20)
        extra = [m for m in c.consume(num_messages=10, timeout=1.0) if not m.error()]
        return sorted(m.value() for m in msgs + extra)
    finally:
        c.close()


def test_kafkajs_transactional_consume_transform_produce(bootstrap):
    count = 20
    source, sink = f"js-in-{uuid.uuid4().hex[:8]}", f"js-out-{uuid.uuid4().hex[:8]}"
    group = f"js-txn-{uuid.uuid4().hex[:8]}"
    ck_create_topic(bootstrap, source, partitions=2)
    ck_create_topic(bootstrap, sink, partitions=2)
    ck_produce_all(ck_producer(bootstrap), source,
                   [{"partition": i % 2, "value": b"in-%d" % i} for i in range(count)])

    run = subprocess.run([node(), "transactions.mjs", bootstrap, source, sink, group, str(count)],
                         cwd=JS_DIR, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"kafkajs failed (rc={run.returncode}):\n{run.stdout}\n{run.stderr}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    records = result["records"]
    assert sorted(r["value"] for r in records) == sorted("in-%d" % i for i in range(count))

    committed = sorted(r["value"].replace("in-", "out-").encode() for r in records[:count // 2])
    assert read(bootstrap, sink, 2, count // 2, "read_committed") == committed
    assert len(read(bootstrap, sink, 2, count, "read_uncommitted")) == count
    admin = ck_admin(bootstrap)
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)
    offsets = res[group].result(timeout=15)
    got = {tp.partition: tp.offset for tp in offsets.topic_partitions if tp.offset >= 0}
    assert got == {int(p): o for p, o in result["committed"].items()}
