"""confluent-kafka's consume-transform-produce loop on a three-broker
cluster (RF 3, min.insync.replicas 2) while each broker in turn, and so the
transaction coordinator, the group coordinator and partition leaders, is
SIGKILLed and restarted. The loop recovers as librdkafka's transactional
contract says (retry a retriable commit, abort and rewind to the committed
offsets when the transaction must be aborted, a new producer after a fatal
error); the output read with read_committed must hold every input record's
output exactly once."""

from __future__ import annotations

import collections
import threading
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from sluice_testlib import Cluster, ck_admin, ck_consume, ck_consumer, ck_produce_all, ck_producer

FAST_FAILOVER = (
    "--broker-session-timeout-ms", "1500",
    "--broker-heartbeat-interval-ms", "250",
    "--controller-election-timeout-ms", "500",
    "--group-initial-rebalance-delay-ms", "200",
)
PARTITIONS = 3
PER_PARTITION = 1500
KILLS = 6


@pytest.fixture
def cluster(broker_bin, tmp_path, request):
    c = Cluster(broker_bin, tmp_path, 3, extra_args=FAST_FAILOVER)
    request.node._sluice_brokers = list(c.brokers)  # their logs on failure
    c.start()
    yield c
    c.stop()


def transactional(bootstrap, tid):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": tid,
        "transaction.timeout.ms": 60000,
        "message.timeout.ms": 60000,
        "socket.timeout.ms": 10000,
        "reconnect.backoff.max.ms": 500,
    })
    p.init_transactions(30)
    return p


def rewind(consumer, topic):
    """Back to the group's committed offsets (the start before any)."""
    committed = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    consumer.assign([TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                     for tp in committed])


@pytest.mark.timeout_s(240)
def test_consume_transform_produce_exactly_once_while_brokers_are_killed(cluster):
    bootstrap = cluster.kafka_addr
    source, sink = f"eos-in-{uuid.uuid4().hex[:8]}", f"eos-out-{uuid.uuid4().hex[:8]}"
    admin = ck_admin(bootstrap)  # kept: futures fail once their handle is gone
    futures = admin.create_topics(
        [NewTopic(t, PARTITIONS, 3, config={"min.insync.replicas": "2"}) for t in (source, sink)],
        request_timeout=15)
    for f in futures.values():
        f.result(timeout=15)
    total = PARTITIONS * PER_PARTITION
    ck_produce_all(ck_producer(bootstrap, **{"enable.idempotence": True}), source,
                   [{"partition": i % PARTITIONS, "value": b"%d" % i} for i in range(total)])

    group = f"eos-{uuid.uuid4().hex[:8]}"
    consumer = ck_consumer(bootstrap, **{"group.id": group, "isolation.level": "read_committed",
                                         "enable.auto.commit": False})
    rewind(consumer, source)
    tid = f"eos-{uuid.uuid4().hex[:8]}"
    producer = transactional(bootstrap, tid)
    committed = aborts = new_producers = 0
    progress = {"committed": 0}
    stop = threading.Event()
    kills = []
    nemesis_errors = []

    # Kill k happens once k/8 of the records are committed (the loop waits
    # for it there, so every kill lands mid-run however fast the machine):
    # each broker twice, in turn, down 1.5 s, then restarted by this
    # thread, not by the client loop, as a supervisor would.
    thresholds = [total * (k + 1) // 8 for k in range(KILLS)]

    def nemesis():
        try:
            for k, at in enumerate(thresholds):
                while progress["committed"] < at:
                    if stop.wait(0.05):
                        return
                b = cluster.brokers[k % 3]
                b.kill()
                kills.append(k % 3)
                time.sleep(1.5)
                b.start()
        except Exception as e:  # reported by the test thread
            nemesis_errors.append(e)

    killer = threading.Thread(target=nemesis, daemon=True)
    killer.start()
    deadline = time.monotonic() + 200
    try:
        while committed < total:
            progress["committed"] = committed
            assert time.monotonic() < deadline, \
                f"{committed} of {total} committed before the deadline ({len(kills)} kills, {aborts} aborts)"
            if len(kills) < KILLS and committed >= thresholds[len(kills)] and not nemesis_errors:
                time.sleep(0.05)  # the next kill is due
                continue
            batch = [m for m in consumer.consume(num_messages=10, timeout=0.5) if not m.error()]
            try:
                producer.begin_transaction()
                for m in batch:
                    producer.produce(sink, value=b"out-" + m.value(), partition=m.partition())
                producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                                     consumer.consumer_group_metadata(), 30)
                while True:
                    try:
                        producer.commit_transaction(30)
                        break
                    except KafkaException as e:
                        if e.args[0].retriable():
                            print(f"commit_transaction: {e.args[0]}; retrying")
                            continue
                        raise
                committed += len(batch)
            except KafkaException as e:
                err = e.args[0]
                if err.fatal():
                    new_producers += 1
                    producer = transactional(bootstrap, tid)
                else:
                    aborts += 1
                    print(f"aborting after {err}")
                    while True:
                        try:
                            producer.abort_transaction(30)
                            break
                        except KafkaException as again:
                            if again.args[0].retriable():
                                print(f"abort_transaction: {again.args[0]}; retrying")
                                continue
                            if not again.args[0].fatal():
                                raise
                            new_producers += 1
                            producer = transactional(bootstrap, tid)
                            break
                # The batch's offsets did not count: consume it again.
                rewind(consumer, source)
                committed = sum(max(tp.offset, 0) for tp in consumer.committed(
                    [TopicPartition(source, p) for p in range(PARTITIONS)], timeout=30))
    finally:
        stop.set()
        killer.join(timeout=30)
        consumer.close()
    assert not nemesis_errors, f"killing and restarting brokers failed: {nemesis_errors}"
    print(f"{len(kills)} kills, {aborts} aborts, {new_producers} new producers")
    assert len(kills) == KILLS, f"only {len(kills)} kills"


    reader = ck_consumer(bootstrap, **{"isolation.level": "read_committed"})
    try:
        reader.assign([TopicPartition(sink, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        out = ck_consume(reader, total, timeout=60)
        out += [m for m in reader.consume(num_messages=100, timeout=2.0) if not m.error()]
    finally:
        reader.close()
    counts = collections.Counter(m.value() for m in out)
    missing = [i for i in range(total) if counts[b"out-%d" % i] == 0]
    duplicated = {v: n for v, n in counts.items() if n > 1}
    assert not missing and not duplicated, f"missing {missing[:20]}, duplicated {list(duplicated)[:20]}"
    assert len(out) == total
