"""Consumer groups and idempotent producers through kafka-python:
KafkaConsumer group membership with the range and roundrobin assignors,
commits and resumption, KafkaAdminClient group operations, and
KafkaProducer with enable_idempotence."""

from __future__ import annotations

import collections
import time
import uuid

import pytest
import kafka.errors as Errors
from kafka import TopicPartition
from kafka.admin import NewTopic
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.structs import OffsetAndMetadata

from sluice_testlib import (
    GROUP_BROKER_ARGS,
    kp_admin,
    kp_consume,
    kp_consumer,
    kp_producer,
    metric_value,
    wait_until,
)

SLUICE_BROKER_ARGS = GROUP_BROKER_ARGS  # picked up by conftest's module broker
# Every test against one broker and against three, where a group's
# coordinator holds no replica of most partitions its members commit.
SLUICE_TOPOLOGIES = ("one", "three")

ASSIGNORS = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor}


@pytest.fixture
def admin(bootstrap):
    a = kp_admin(bootstrap)
    yield a
    a.close()


def new_group(prefix="kp"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(admin, name, partitions):
    admin.create_topics([NewTopic(name, partitions, 1)], timeout_ms=10000)
    return name


def produce(bootstrap, topic, nparts, n, tag, **conf):
    """n records round-robin over the partitions; returns {(p, off): value}."""
    p = kp_producer(bootstrap, **conf)
    try:
        futs = [p.send(topic, value=f"{tag}-{i}".encode(), partition=i % nparts) for i in range(n)]
        p.flush(timeout=20)
        return {(md.partition, md.offset): f"{tag}-{i}".encode() for i, md in
                enumerate(f.get(timeout=20) for f in futs)}
    finally:
        p.close(timeout=5)


def group_consumer(bootstrap, group, topic, assignor="range", **extra):
    conf = dict(
        group_id=group,
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
        max_poll_interval_ms=30000,
        partition_assignment_strategy=[ASSIGNORS[assignor]],
        metadata_max_age_ms=2000,
    )
    conf.update(extra)
    c = kp_consumer(bootstrap, **conf)
    c.subscribe([topic])
    return c


class Driver:
    """Polls group members in turn from the test thread; commits after each batch."""

    def __init__(self, consumers):
        self.consumers = list(consumers)
        self.records = {id(c): [] for c in self.consumers}
        self.commit_errors = []

    def pump(self, until, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            for c in self.consumers:
                batches = c.poll(timeout_ms=50)
                got = [r for recs in batches.values() for r in recs]
                if got:
                    self.records[id(c)].extend(got)
                    try:
                        c.commit()  # synchronous, the consumed positions
                    except Errors.KafkaError as e:
                        self.commit_errors.append(repr(e))
            if until():
                return
            if time.monotonic() > deadline:
                state = [(sorted(tp.partition for tp in c.assignment()), len(self.records[id(c)]))
                         for c in self.consumers]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; members: {state}")

    def settle(self, seconds):
        end = time.monotonic() + seconds
        try:
            self.pump(lambda: time.monotonic() > end, seconds + 5, "settle")
        except AssertionError:
            pass

    def counts(self):
        return collections.Counter((r.partition, r.offset) for recs in self.records.values() for r in recs)


def shares(consumers):
    return [frozenset(tp.partition for tp in c.assignment()) for c in consumers]


def balanced(consumers, nparts):
    s = shares(consumers)
    return all(s) and sum(len(x) for x in s) == nparts and frozenset().union(*s) == frozenset(range(nparts))


@pytest.mark.parametrize("assignor", ["range", "roundrobin"])
def test_group_members_share_topic_and_resume_from_commits(bootstrap, admin, assignor):
    nparts = 4
    topic = create_topic(admin, f"kp-group-{assignor}-{uuid.uuid4().hex[:8]}", nparts)
    group = new_group(assignor)
    consumers = [group_consumer(bootstrap, group, topic, assignor, client_id=f"kp-{assignor}-{i}") for i in range(2)]
    try:
        d = Driver(consumers)
        d.pump(lambda: balanced(consumers, nparts), 20, "two members to split 4 partitions")
        expected = {"range": {frozenset({0, 1}), frozenset({2, 3})},
                    "roundrobin": {frozenset({0, 2}), frozenset({1, 3})}}[assignor]
        assert set(shares(consumers)) == expected, f"{assignor} assignment: {shares(consumers)}"

        written = produce(bootstrap, topic, nparts, 40, "a")
        d.pump(lambda: len(d.counts()) >= 40, 20, "40 records consumed")
        d.settle(0.5)  # nothing more may arrive
        counts = d.counts()
        assert set(counts) == set(written)
        assert max(counts.values()) == 1, {k: v for k, v in counts.items() if v > 1}
        assert not d.commit_errors, d.commit_errors
        for c, share in zip(consumers, shares(consumers)):
            assert {r.partition for r in d.records[id(c)]} <= share
        for p in range(nparts):
            assert consumers[0].committed(TopicPartition(topic, p)) == 10, f"committed offset of partition {p}"
    finally:
        for c in consumers:
            c.close(autocommit=False)

    # A new member of the group resumes after the committed offsets.
    written2 = produce(bootstrap, topic, nparts, 20, "b")
    c = group_consumer(bootstrap, group, topic, assignor)
    try:
        recs = kp_consume(c, 20, timeout=20)
        extra = c.poll(timeout_ms=500)
        assert not any(extra.values()), f"unexpected extra records: {extra}"
        assert {(r.partition, r.offset): r.value for r in recs} == written2
        assert sorted(tp.partition for tp in c.assignment()) == list(range(nparts))
    finally:
        c.close(autocommit=False)


def test_admin_client_groups(bootstrap, admin):
    nparts = 4
    topic = create_topic(admin, f"kp-admin-groups-{uuid.uuid4().hex[:8]}", nparts)
    group = new_group("kp-admin")
    consumers = [group_consumer(bootstrap, group, topic, client_id=f"kp-admin-{i}") for i in range(2)]
    closed = False
    try:
        d = Driver(consumers)
        d.pump(lambda: balanced(consumers, nparts), 20, "two members to split the topic")
        produce(bootstrap, topic, nparts, 20, "x")
        d.pump(lambda: len(d.counts()) >= 20, 20, "records consumed and committed")

        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert group in listed, sorted(listed)
        assert listed[group]["protocol_type"] == "consumer"
        assert listed[group]["group_state"] == "Stable"
        assert group in {g["group_id"] for g in admin.list_groups(states_filter=["Stable"])}
        assert group not in {g["group_id"] for g in admin.list_groups(states_filter=["Empty"])}

        desc = admin.describe_groups([group])[group]
        assert desc["error"] is None
        assert desc["group_state"] == "Stable"
        assert desc["protocol_type"] == "consumer"
        assert desc["protocol_data"] == "range"
        assert sorted(m["client_id"] for m in desc["members"]) == ["kp-admin-0", "kp-admin-1"]
        assigned = {}
        for m in desc["members"]:
            assert m["member_metadata"]["topics"] == [topic]
            [a] = m["member_assignment"]["assigned_partitions"]
            assert a["topic"] == topic
            assigned[m["client_id"]] = frozenset(a["partitions"])
        assert set(assigned.values()) == set(shares(consumers)) == {frozenset({0, 1}), frozenset({2, 3})}

        offsets = admin.list_group_offsets({group: None})[group]
        assert {tp: om.offset for tp, om in offsets.items()} == {TopicPartition(topic, p): 5 for p in range(nparts)}
        one = admin.list_group_offsets({group: [TopicPartition(topic, 2)]})[group]
        assert {tp: om.offset for tp, om in one.items()} == {TopicPartition(topic, 2): 5}

        # Refused while the group has members / is subscribed to the topic.
        res = dict(admin.delete_groups([group]))
        assert res[group] in ("NonEmptyGroupError", Errors.NonEmptyGroupError), res
        res = admin.delete_group_offsets(group, [TopicPartition(topic, 0)])
        assert res == {TopicPartition(topic, 0): Errors.GroupSubscribedToTopicError}, res

        for c in consumers:
            c.close(autocommit=False)
        closed = True
        wait_until(lambda: admin.describe_groups([group])[group]["group_state"] == "Empty", 10,
                   what="group to become Empty")
        assert admin.describe_groups([group])[group]["members"] == []
        assert group in {g["group_id"] for g in admin.list_groups(states_filter=["Empty"])}

        # Offset admin on the empty group.
        res = admin.delete_group_offsets(group, [TopicPartition(topic, 0)])
        assert res == {TopicPartition(topic, 0): Errors.NoError}, res
        admin.alter_group_offsets(group, {TopicPartition(topic, 1): OffsetAndMetadata(2, "", -1)})
        offsets = admin.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in offsets.items()} == {1: 2, 2: 5, 3: 5}

        res = dict(admin.delete_groups([group]))
        assert res[group] in ("OK", Errors.NoError, None), res
        assert group not in {g["group_id"] for g in admin.list_groups()}
        assert admin.describe_groups([group])[group]["group_state"] == "Dead"
        assert admin.list_group_offsets({group: None})[group] == {}
        res = dict(admin.delete_groups([group]))
        assert res[group] in ("GroupIdNotFoundError", Errors.GroupIdNotFoundError), res
    finally:
        if not closed:
            for c in consumers:
                c.close(autocommit=False)


def test_idempotent_producer_exactly_once_in_order(broker, bootstrap, admin):
    nparts = 3
    n = 300
    topic = create_topic(admin, f"kp-idem-{uuid.uuid4().hex[:8]}", nparts)
    init_before = metric_value(broker, "sluice_requests_total", 0, api="InitProducerId")
    written = produce(bootstrap, topic, nparts, n, "seq", enable_idempotence=True, acks="all",
                      max_in_flight_requests_per_connection=5, batch_size=2000)
    assert len(written) == n
    init_after = metric_value(broker, "sluice_requests_total", 0, api="InitProducerId")
    assert init_after > init_before, "the idempotent producer never sent InitProducerId"

    c = kp_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(nparts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        recs = kp_consume(c, n, timeout=20)
        extra = c.poll(timeout_ms=500)
        assert not any(extra.values()), f"more than {n} records: {extra}"
        assert c.end_offsets(tps) == {tp: n // nparts for tp in tps}
    finally:
        c.close(autocommit=False)
    for p in range(nparts):
        got = [r.value for r in sorted((r for r in recs if r.partition == p), key=lambda r: r.offset)]
        want = [f"seq-{i}".encode() for i in range(p, n, nparts)]
        assert got == want, f"partition {p}: duplicates, gaps or reordering"


def test_transactional_consume_transform_produce(bootstrap, admin):
    """kafka-python's transactional producer in a consume-transform-produce
    loop: a group's input read with read_committed, each record's output
    and the group's offsets committed together; an aborted transaction's
    output is visible only to read_uncommitted consumers and its offsets
    never count."""
    nparts = 2
    source = create_topic(admin, f"kp-txn-in-{uuid.uuid4().hex[:8]}", nparts)
    sink = create_topic(admin, f"kp-txn-out-{uuid.uuid4().hex[:8]}", nparts)
    produce(bootstrap, source, nparts, 20, "in")
    group = new_group("kp-txn")
    consumer = group_consumer(bootstrap, group, source, isolation_level="read_committed")
    producer = kp_producer(bootstrap, transactional_id=f"kp-txn-{uuid.uuid4().hex[:8]}",
                           enable_idempotence=True, acks="all")
    try:
        producer.init_transactions()
        records = kp_consume(consumer, 20, timeout=30)
        # One transaction for the first ten records, committed; one for the
        # rest, aborted.
        for batch, commit in ((records[:10], True), (records[10:], False)):
            producer.begin_transaction()
            for r in batch:
                producer.send(sink, value=r.value.replace(b"in-", b"out-"), partition=r.partition)
            ends = {}
            for r in batch:
                tp = TopicPartition(r.topic, r.partition)
                ends[tp] = max(ends.get(tp, 0), r.offset + 1)
            producer.send_offsets_to_transaction(
                {tp: OffsetAndMetadata(o, "", -1) for tp, o in ends.items()}, consumer.group_metadata())
            if commit:
                producer.commit_transaction()
                committed_ends = ends
            else:
                producer.flush(timeout=20)
                producer.abort_transaction()
    finally:
        producer.close(timeout=5)
        consumer.close(autocommit=False)

    def read(isolation, n):
        c = kp_consumer(bootstrap, isolation_level=isolation)
        try:
            tps = [TopicPartition(sink, p) for p in range(nparts)]
            c.assign(tps)
            c.seek_to_beginning(*tps)
            recs = kp_consume(c, n, timeout=20)
            extra = c.poll(timeout_ms=1000)
            return sorted(r.value for r in recs + [x for v in extra.values() for x in v])
        finally:
            c.close(autocommit=False)

    assert read("read_committed", 10) == sorted(r.value.replace(b"in-", b"out-") for r in records[:10])
    assert len(read("read_uncommitted", 20)) == 20
    offsets = admin.list_group_offsets({group: None})[group]
    assert {tp: om.offset for tp, om in offsets.items()} == committed_ends
