"""Consumer groups, committed offsets and idempotent producers through
confluent-kafka (librdkafka), plus kcat's balanced consumer.

In-process members are driven from the test thread (`pump`), so every
rebalance callback runs there and the partition ownership tracker sees them
in real order. Consumers that must be SIGKILLed run as subprocesses
(consumer_proc.py)."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from consumer_proc import ConsumerProc
from sluice_testlib import (
    GROUP_BROKER_ARGS,
    ck_admin,
    ck_consume,
    ck_consumer,
    ck_create_topic,
    ck_group_consumer,
    ck_produce_all,
    ck_producer,
    metric_value,
    unique_topic,
    wait_until,
)

SLUICE_BROKER_ARGS = GROUP_BROKER_ARGS  # picked up by conftest's module broker
# Every test against one broker and against three, where a group's
# coordinator holds no replica of most partitions its members commit.
SLUICE_TOPOLOGIES = ("one", "three")

T = 15.0  # seconds, per admin/client operation


def new_group(prefix="g"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------
# In-process group members
# ---------------------------------------------------------------------------
class Ownership:
    """Which member owns each partition, from the rebalance callbacks.
    A partition handed to a member while another still holds it is a
    violation of the group protocol (eager or cooperative alike)."""

    def __init__(self):
        self.owner: dict[int, str] = {}
        self.violations: list[str] = []
        self.log: list[tuple[float, str, str, tuple]] = []

    def assign(self, name, parts):
        self.log.append((time.monotonic(), name, "assign", tuple(parts)))
        for p in parts:
            other = self.owner.get(p)
            if other is not None and other != name:
                self.violations.append(f"partition {p} assigned to {name} while still owned by {other}")
            self.owner[p] = name

    def release(self, name, parts, how):
        self.log.append((time.monotonic(), name, how, tuple(parts)))
        for p in parts:
            if self.owner.get(p) == name:
                del self.owner[p]


class Member:
    def __init__(self, name, bootstrap, group, topic, ownership=None, **conf):
        self.name = name
        self.topic = topic
        self.ownership = ownership or Ownership()
        self.assigned: set[int] = set()
        self.records: list[tuple[int, int, bytes]] = []
        self.callbacks: list[tuple[str, tuple]] = []
        self.commit_failures: list[str] = []
        self.closed = False
        self.cooperative = conf.get("partition.assignment.strategy") == "cooperative-sticky"
        self.c = ck_group_consumer(bootstrap, group, **{"client.id": name, **conf})
        self.c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, consumer, parts):
        ps = sorted(tp.partition for tp in parts)
        self.callbacks.append(("assign", tuple(ps)))
        self.ownership.assign(self.name, ps)
        if self.cooperative:  # incremental: these partitions are added
            self.assigned |= set(ps)
        else:
            self.assigned = set(ps)

    def _release(self, parts, how):
        ps = sorted(tp.partition for tp in parts)
        self.callbacks.append((how, tuple(ps)))
        self.ownership.release(self.name, ps, how)
        self.assigned -= set(ps)

    def _on_revoke(self, consumer, parts):
        self._release(parts, "revoke")

    def _on_lost(self, consumer, parts):
        self._release(parts, "lost")

    def poll(self, timeout=0.05):
        """Consume what is there, 'process' it, then commit synchronously."""
        if self.closed:
            return 0
        msgs = self.c.consume(num_messages=200, timeout=timeout)
        nxt = {}
        for m in msgs:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"{self.name}: consume error {m.error()}")
            self.records.append((m.partition(), m.offset(), m.value()))
            nxt[m.partition()] = m.offset() + 1
        if nxt:
            try:
                self.c.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in nxt.items()], asynchronous=False)
            except KafkaException as e:
                self.commit_failures.append(f"{sorted(nxt.items())}: {e}")
        return len(msgs)

    def close(self):
        if not self.closed:
            self.c.close()
            self.closed = True
            # close() revokes through the callback; make sure nothing lingers.
            self.ownership.release(self.name, sorted(self.assigned), "closed")
            self.assigned = set()


def pump(members, until, timeout, what):
    """Poll every live member in turn until `until()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            m.poll(0.05)
        if until():
            return
        if time.monotonic() > deadline:
            state = {m.name: (sorted(m.assigned), m.callbacks[-4:], len(m.records)) for m in members}
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; members: {state}")


def pump_for(members, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in members:
            m.poll(0.05)


def balanced(members, nparts):
    """Every live member holds a non-empty share; shares are disjoint and cover all."""
    live = [m for m in members if not m.closed]
    shares = [m.assigned for m in live]
    if not all(shares):
        return False
    union = set().union(*shares)
    return union == set(range(nparts)) and sum(len(s) for s in shares) == nparts


def produce_tagged(bootstrap, topic, nparts, n, tag, **producer_conf):
    """n records spread round-robin over the partitions; returns {(p, off): value}."""
    records = [{"partition": i % nparts, "value": f"{tag}-{i}".encode()} for i in range(n)]
    delivered = ck_produce_all(ck_producer(bootstrap, **producer_conf), topic, records)
    return {(m.partition(), m.offset()): m.value() for m in delivered}


def consumed_counts(members, extra=()):
    c = collections.Counter()
    for m in members:
        c.update((p, o) for p, o, _ in m.records)
    c.update(extra)
    return c


# ---------------------------------------------------------------------------
# Sharing a topic
# ---------------------------------------------------------------------------
def test_group_members_share_partitions_and_reassign_on_leave(bootstrap, topic):
    nparts = 6
    ck_create_topic(bootstrap, topic, partitions=nparts)
    group = new_group()
    own = Ownership()
    members = [Member(f"share-{i}", bootstrap, group, topic, own) for i in range(3)]
    try:
        pump(members, lambda: balanced(members, nparts), 20, "3 members to split 6 partitions")
        shares = {m.name: sorted(m.assigned) for m in members}
        assert all(len(s) == 2 for s in shares.values()), f"range over 6 partitions/3 members: {shares}"

        written = produce_tagged(bootstrap, topic, nparts, 60, "a")
        pump(members, lambda: len(consumed_counts(members)) >= 60, 20, "60 records consumed")
        pump_for(members, 0.5)  # nothing more may arrive
        counts = consumed_counts(members)
        assert set(counts) == set(written), f"missing {sorted(set(written) - set(counts))[:10]}"
        dups = {k: v for k, v in counts.items() if v > 1}
        assert not dups, f"records delivered more than once: {dups}"
        for m in members:
            wrong = [(p, o) for p, o, _ in m.records if p not in shares[m.name]]
            assert not wrong, f"{m.name} got records of partitions it does not own: {wrong[:5]}"

        # One member leaves: its partitions go to the other two.
        leaver = members[0]
        left_parts = set(leaver.assigned)
        leaver.close()
        rest = members[1:]
        pump(rest, lambda: balanced(rest, nparts), 20, "2 remaining members to take over all 6 partitions")
        for p in left_parts:
            assert any(p in m.assigned for m in rest), f"partition {p} of the leaver not reassigned"

        written2 = produce_tagged(bootstrap, topic, nparts, 60, "b")
        pump(rest, lambda: len(consumed_counts(members)) >= 120, 20, "second 60 records consumed")
        pump_for(rest, 0.5)
        counts = consumed_counts(members)
        assert set(counts) == set(written) | set(written2)
        dups = {k: v for k, v in counts.items() if v > 1}
        assert not dups, f"records delivered again after a clean leave (commits lost?): {dups}"
        assert not own.violations, own.violations
        assert not any(m.commit_failures for m in members), [m.commit_failures for m in members]

        committed = rest[0].c.committed([TopicPartition(topic, p) for p in range(nparts)], timeout=T)
        assert {tp.partition: tp.offset for tp in committed} == {p: 20 for p in range(nparts)}
    finally:
        for m in members:
            m.close()


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_assignors_join_and_leave_without_double_ownership(bootstrap, assignor):
    nparts = 6
    topic = unique_topic(f"assignor-{assignor}")
    ck_create_topic(bootstrap, topic, partitions=nparts)
    group = new_group(assignor)
    own = Ownership()
    conf = {"partition.assignment.strategy": assignor}
    a = Member("a", bootstrap, group, topic, own, **conf)
    b = Member("b", bootstrap, group, topic, own, **conf)
    everyone = [a, b]
    written = {}
    try:
        pump([a, b], lambda: balanced([a, b], nparts), 20, "a and b to split the topic")
        written.update(produce_tagged(bootstrap, topic, nparts, 30, "p1"))
        pump([a, b], lambda: len(consumed_counts(everyone)) >= len(written), 20, "phase 1 consumed")

        c = Member("c", bootstrap, group, topic, own, **conf)
        everyone.append(c)
        pump([a, b, c], lambda: balanced([a, b, c], nparts), 25, "c to join and get a share")
        written.update(produce_tagged(bootstrap, topic, nparts, 30, "p2"))
        pump([a, b, c], lambda: len(consumed_counts(everyone)) >= len(written), 20, "phase 2 consumed")

        a.close()
        pump([b, c], lambda: balanced([b, c], nparts), 25, "b and c to take over a's partitions")
        written.update(produce_tagged(bootstrap, topic, nparts, 30, "p3"))
        pump([b, c], lambda: len(set(consumed_counts(everyone)) & set(written)) >= len(written), 20,
             "phase 3 consumed")
        pump_for([b, c], 0.5)

        counts = consumed_counts(everyone)
        assert set(counts) == set(written), f"missing {sorted(set(written) - set(counts))[:10]}"
        assert not own.violations, f"{assignor}: {own.violations}\nlog: {own.log}"
        dups = {k: v for k, v in counts.items() if v > 1}
        failures = [f for m in everyone for f in m.commit_failures]
        assert not dups or failures, f"duplicates without any failed commit: {dups}"
        if assignor == "cooperative-sticky":
            # Incremental: b never gave up everything at once when c joined.
            full_revokes = [cb for m in (b,) for cb in m.callbacks if cb[0] == "revoke" and len(cb[1]) >= 3]
            assert not full_revokes, f"cooperative rebalance revoked whole assignments: {b.callbacks}"
    finally:
        for m in everyone:
            m.close()


# ---------------------------------------------------------------------------
# Failures: killed members, static membership, broker restart
# ---------------------------------------------------------------------------
def test_sigkilled_member_partitions_move_to_survivor(bootstrap, topic, tmp_path):
    nparts = 4
    ck_create_topic(bootstrap, topic, partitions=nparts)
    group = new_group("kill")
    survivor = Member("survivor", bootstrap, group, topic)
    # Commits every 3rd record of a partition and is slow, so the kill lands
    # between processing and committing: those records must be redelivered.
    proc = ConsumerProc(bootstrap, group, topic, session_timeout_ms=2000, commit_every=3,
                        process_delay_ms=20, log_path=tmp_path / "proc.log")
    try:
        def both_hold_shares():
            snap = proc.snapshot()
            s, p = survivor.assigned, snap["assigned"]
            return s and p and not (s & p) and (s | p) == set(range(nparts))

        pump([survivor], both_hold_shares, 30, f"survivor and subprocess to split the topic ({proc.describe()})")
        proc_parts = set(proc.snapshot()["assigned"])

        written = produce_tagged(bootstrap, topic, nparts, 40, "one")

        def all_seen():
            seen = {(p, o) for p, o, _ in proc.snapshot()["records"]} | {(p, o) for p, o, _ in survivor.records}
            return set(written) <= seen

        pump([survivor], all_seen, 20, "phase 1 consumed by both")

        written2 = produce_tagged(bootstrap, topic, nparts, 40, "two")
        n1 = len([r for r in proc.snapshot()["records"]])
        pump([survivor], lambda: len(proc.snapshot()["records"]) >= n1 + 4, 15,
             "subprocess to process phase 2 records")
        t_kill = time.monotonic()
        proc.kill()
        written.update(written2)
        written.update(produce_tagged(bootstrap, topic, nparts, 40, "three"))

        pump([survivor], lambda: survivor.assigned == set(range(nparts)), 20,
             "survivor to inherit the killed member's partitions after its session timeout")
        took = time.monotonic() - t_kill
        pump([survivor], all_seen, 20, "every record processed by someone")
        pump_for([survivor], 0.5)

        proc_recs = [(p, o) for p, o, _ in proc.snapshot()["records"]]
        counts = consumed_counts([survivor], extra=proc_recs)
        missing = set(written) - set(counts)
        assert not missing, f"records never processed: {sorted(missing)[:10]}"
        dups = {k: v for k, v in counts.items() if v > 1}
        print(f"takeover after {took:.1f}s; subprocess processed {len(proc_recs)}, survivor "
              f"{len(survivor.records)}, duplicates {len(dups)}: {sorted(dups)}")
        # The survivor resumes each inherited partition at the killed member's
        # last commit (its last printed COMMITTED, or one in flight at the kill),
        # so a duplicate is exactly a record processed after that commit.
        committed = proc.snapshot()["committed"]
        last_done = {p: max(o for q, o in proc_recs if q == p) for p in {q for q, _ in proc_recs}}
        for p in proc_parts:
            resumed = min((o for q, o, _ in survivor.records if q == p), default=None)
            lo, hi = committed.get(p, 0), last_done.get(p, -1) + 1
            assert resumed is not None and lo <= resumed <= hi, (
                f"partition {p}: survivor resumed at {resumed}, expected the killed member's "
                f"committed offset (between {lo} and {hi})")
        for (p, o) in dups:
            assert p in proc_parts and o >= committed.get(p, 0), (p, o, committed)
    finally:
        proc.kill()
        survivor.close()


def test_static_member_restart_keeps_assignment_without_rebalance(broker, bootstrap, topic, tmp_path):
    nparts = 4
    ck_create_topic(bootstrap, topic, partitions=nparts)
    group = new_group("static")
    instance = "static-" + uuid.uuid4().hex[:6]
    other = Member("other", bootstrap, group, topic)
    pump([other], lambda: other.assigned == set(range(nparts)), 20, "first member to get everything")
    proc = ConsumerProc(bootstrap, group, topic, instance_id=instance, session_timeout_ms=10000,
                        log_path=tmp_path / "proc1.log")
    proc2 = None
    try:
        def split():
            p = proc.snapshot()["assigned"]
            return other.assigned and p and not (other.assigned & p) and (other.assigned | p) == set(range(nparts))

        pump([other], split, 30, f"static subprocess to get a share ({proc.describe()})")
        static_parts = set(proc.snapshot()["assigned"])
        pump_for([other], 1.0)  # let the group settle
        callbacks_before = list(other.callbacks)
        rebalances_before = metric_value(broker, "sluice_group_rebalances_total")
        assert rebalances_before is not None, "sluice_group_rebalances_total missing from /metrics"

        proc.kill()  # no LeaveGroup
        proc2 = ConsumerProc(bootstrap, group, topic, instance_id=instance, session_timeout_ms=10000,
                             log_path=tmp_path / "proc2.log")
        pump([other], lambda: proc2.snapshot()["assigned"], 10,
             f"restarted static member to get its assignment back ({proc2.describe()})")
        assert proc2.snapshot()["assigned"] == static_parts, (proc2.snapshot()["events"], static_parts)

        written = produce_tagged(bootstrap, topic, nparts, 20, "after")
        pump([other], lambda: {(p, o) for p, o, _ in other.records} | {(p, o) for p, o, _ in proc2.snapshot()["records"]}
             >= set(written), 15, "records after the restart consumed")
        pump_for([other], 1.5)  # several heartbeat intervals: a rebalance would show up now

        assert proc2.snapshot()["events"] == [("ASSIGN", tuple(sorted(static_parts)))], proc2.snapshot()["events"]
        assert other.callbacks == callbacks_before, (
            f"the other member saw a rebalance: {other.callbacks[len(callbacks_before):]}")
        assert {p for p, _, _ in proc2.snapshot()["records"]} <= static_parts
        rebalances_after = metric_value(broker, "sluice_group_rebalances_total")
        assert rebalances_after == rebalances_before, (
            f"sluice_group_rebalances_total went {rebalances_before} -> {rebalances_after} across a static restart")
    finally:
        proc.kill()
        if proc2 is not None:
            proc2.stop()
        other.close()


def test_committed_offsets_survive_broker_sigkill(broker_factory):
    b = broker_factory(extra_args=GROUP_BROKER_ARGS)
    topic = unique_topic("offsets-crash")
    group = new_group("crash")
    ck_create_topic(b.kafka_addr, topic, partitions=3)
    produce_tagged(b.kafka_addr, topic, 3, 30, "x")
    want = {0: 4, 1: 7, 2: 10}

    m = Member("before", b.kafka_addr, group, topic)
    pump([m], lambda: m.assigned == {0, 1, 2}, 20, "member to get all partitions")
    m.c.commit(offsets=[TopicPartition(topic, p, o) for p, o in want.items()], asynchronous=False)
    got = m.c.committed([TopicPartition(topic, p) for p in range(3)], timeout=T)
    assert {tp.partition: tp.offset for tp in got} == want
    m.close()

    assert b.kill() == -signal.SIGKILL
    b.start()

    c = ck_group_consumer(b.kafka_addr, group)
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=T)
        assert {tp.partition: tp.offset for tp in got} == want, "committed offsets lost by a broker crash"
        c.subscribe([topic])
        msgs = ck_consume(c, (10 - 4) + (10 - 7), timeout=20)
        got_offsets = sorted((x.partition(), x.offset()) for x in msgs)
        assert got_offsets == [(0, o) for o in range(4, 10)] + [(1, o) for o in range(7, 10)]
        extra = [x for x in c.consume(num_messages=10, timeout=1.0) if not x.error()]
        assert not extra, [(x.partition(), x.offset()) for x in extra]
    finally:
        c.close()


# ---------------------------------------------------------------------------
# AdminClient
# ---------------------------------------------------------------------------
def list_groups(admin, states=None):
    kw = {"request_timeout": T}
    if states is not None:
        kw["states"] = set(states)
    res = admin.list_consumer_groups(**kw).result(timeout=T)
    assert not res.errors, res.errors
    return {g.group_id: g for g in res.valid}


def describe_group(admin, group):
    return admin.describe_consumer_groups([group], request_timeout=T)[group].result(timeout=T)


def group_offsets(admin, group, parts=None):
    req = ConsumerGroupTopicPartitions(group, parts) if parts else ConsumerGroupTopicPartitions(group)
    res = admin.list_consumer_group_offsets([req], request_timeout=T)[group].result(timeout=T)
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions if tp.offset >= 0}


def test_admin_client_group_lifecycle(bootstrap, topic):
    nparts = 4
    ck_create_topic(bootstrap, topic, partitions=nparts)
    group = new_group("admin")
    admin = ck_admin(bootstrap)
    members = [Member(f"adm-client-{i}", bootstrap, group, topic) for i in range(2)]
    try:
        pump(members, lambda: balanced(members, nparts), 20, "two members to split the topic")
        produce_tagged(bootstrap, topic, nparts, 20, "adm")
        pump(members, lambda: len(consumed_counts(members)) >= 20, 20, "records consumed")
        expected_offsets = {(topic, p): 5 for p in range(nparts)}

        stable = list_groups(admin, [ConsumerGroupState.STABLE])
        assert group in stable, f"{group} not listed as Stable: {sorted(stable)}"
        assert stable[group].state == ConsumerGroupState.STABLE
        assert not stable[group].is_simple_consumer_group
        assert group not in list_groups(admin, [ConsumerGroupState.EMPTY])
        assert group in list_groups(admin)

        d = describe_group(admin, group)
        assert d.state == ConsumerGroupState.STABLE, d.state
        assert d.partition_assignor == "range", d.partition_assignor
        assert sorted(x.client_id for x in d.members) == ["adm-client-0", "adm-client-1"]
        by_client = {x.client_id: {tp.partition for tp in x.assignment.topic_partitions} for x in d.members}
        for m in members:
            assert by_client[m.name] == m.assigned, (by_client, {m.name: m.assigned})
        assert all(tp.topic == topic for x in d.members for tp in x.assignment.topic_partitions)

        with pytest.raises(KafkaException) as ei:
            admin.delete_consumer_groups([group], request_timeout=T)[group].result(timeout=T)
        assert ei.value.args[0].code() == KafkaError.NON_EMPTY_GROUP, ei.value

        assert group_offsets(admin, group) == expected_offsets
        assert group_offsets(admin, group, [TopicPartition(topic, 1)]) == {(topic, 1): 5}

        for m in members:
            m.close()
        wait_until(lambda: describe_group(admin, group).state == ConsumerGroupState.EMPTY, 10,
                   what="group to become Empty after all members left")
        d = describe_group(admin, group)
        assert d.members == [], d.members
        assert group in list_groups(admin, [ConsumerGroupState.EMPTY])
        assert group not in list_groups(admin, [ConsumerGroupState.STABLE])

        # Commit through the admin API to the (now empty) group.
        new = [TopicPartition(topic, 0, 1), TopicPartition(topic, 3, 2)]
        res = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, new)],
                                                 request_timeout=T)[group].result(timeout=T)
        assert all(tp.error is None for tp in res.topic_partitions), res.topic_partitions
        expected_offsets.update({(topic, 0): 1, (topic, 3): 2})
        assert group_offsets(admin, group) == expected_offsets
        # ...and a new member resumes from them.
        c = ck_group_consumer(bootstrap, group)
        try:
            c.subscribe([topic])
            msgs = ck_consume(c, 4 + 3, timeout=20)
            assert sorted((x.partition(), x.offset()) for x in msgs) == \
                [(0, o) for o in range(1, 5)] + [(3, o) for o in range(2, 5)]
        finally:
            c.close()

        assert admin.delete_consumer_groups([group], request_timeout=T)[group].result(timeout=T) is None
        assert group not in list_groups(admin)
        assert group_offsets(admin, group) == {}
        with pytest.raises(KafkaException) as ei:
            admin.delete_consumer_groups([group], request_timeout=T)[group].result(timeout=T)
        assert ei.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND, ei.value
    finally:
        for m in members:
            m.close()


def test_admin_client_delete_group_offsets(bootstrap, topic):
    if not hasattr(AdminClient, "delete_consumer_group_offsets"):
        pytest.skip("this confluent-kafka has no AdminClient.delete_consumer_group_offsets "
                    "(OffsetDelete is covered by test_groups_kafka_python.py)")
    ck_create_topic(bootstrap, topic, partitions=2)
    group = new_group("offdel")
    admin = ck_admin(bootstrap)
    m = Member("offdel", bootstrap, group, topic)
    try:
        pump([m], lambda: m.assigned == {0, 1}, 20, "member assigned")
        m.c.commit(offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 4)], asynchronous=False)
        req = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])]
        res = admin.delete_consumer_group_offsets(req, request_timeout=T)[group]
        with pytest.raises(KafkaException) as ei:
            r = res.result(timeout=T)
            errs = [tp.error for tp in r.topic_partitions if tp.error is not None]
            if errs:
                raise KafkaException(errs[0])
        assert ei.value.args[0].code() == KafkaError.GROUP_SUBSCRIBED_TO_TOPIC, ei.value
        m.close()
        r = admin.delete_consumer_group_offsets(req, request_timeout=T)[group].result(timeout=T)
        assert all(tp.error is None for tp in r.topic_partitions)
        assert group_offsets(admin, group) == {(topic, 1): 4}
    finally:
        m.close()


# ---------------------------------------------------------------------------
# Idempotent and transactional producers
# ---------------------------------------------------------------------------
def test_idempotent_producer_exactly_once_in_order(bootstrap, topic):
    nparts = 3
    ck_create_topic(bootstrap, topic, partitions=nparts)
    n = 600
    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 50,
        "max.in.flight.requests.per.connection": 5,
        "message.timeout.ms": 20000,
    })
    errors = []
    delivered = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset(), msg.value()))

    for i in range(n):
        p.produce(topic, value=b"seq-%05d" % i, partition=i % nparts, on_delivery=cb)
        if i % 100 == 0:
            p.poll(0)
    assert p.flush(20) == 0
    assert not errors, errors[:5]
    assert len(delivered) == n

    c = ck_consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, q, OFFSET_BEGINNING) for q in range(nparts)])
        msgs = ck_consume(c, n, timeout=20)
        extra = [x for x in c.consume(num_messages=10, timeout=0.5) if not x.error()]
        assert not extra, f"more than {n} records: {[(x.partition(), x.offset(), x.value()) for x in extra]}"
        marks = {q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=T) for q in range(nparts)}
    finally:
        c.close()
    assert marks == {q: (0, n // nparts) for q in range(nparts)}, marks
    for q in range(nparts):
        got = [x.value() for x in sorted((x for x in msgs if x.partition() == q), key=lambda x: x.offset())]
        want = [b"seq-%05d" % i for i in range(q, n, nparts)]
        assert got == want, f"partition {q}: order/duplicates/gaps differ (first diff at " \
            f"{next((k for k, (g, w) in enumerate(zip(got, want)) if g != w), len(got))})"


def test_transactional_producer_commits_and_aborts(bootstrap, topic):
    """confluent-kafka's transactional producer: a committed transaction is
    what read_committed consumers see, an aborted one only read_uncommitted
    consumers, and send_offsets_to_transaction commits a group's offsets
    with the transaction."""
    ck_create_topic(bootstrap, topic, partitions=2)
    p = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": "txn-" + uuid.uuid4().hex[:8],
        "transaction.timeout.ms": 10000,
        "message.timeout.ms": 10000,
        "socket.timeout.ms": 10000,
    })
    p.init_transactions(15.0)
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, value=b"committed-%d" % i, partition=i % 2)
    group = new_group("txn")
    consumer_for_offsets = ck_consumer(bootstrap, **{"group.id": group})
    try:
        offsets = [TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 4)]
        p.send_offsets_to_transaction(offsets, consumer_for_offsets.consumer_group_metadata(), 15.0)
    finally:
        consumer_for_offsets.close()
    p.commit_transaction(15.0)
    p.begin_transaction()
    for i in range(6):
        p.produce(topic, value=b"aborted-%d" % i, partition=i % 2)
    p.flush(15.0)
    p.abort_transaction(15.0)

    def read(isolation, n):
        c = ck_consumer(bootstrap, **{"isolation.level": isolation})
        try:
            c.assign([TopicPartition(topic, q, OFFSET_BEGINNING) for q in range(2)])
            msgs = ck_consume(c, n, timeout=20)
            extra = [x for x in c.consume(num_messages=10, timeout=1.0) if not x.error()]
            return sorted(x.value() for x in msgs + extra)
        finally:
            c.close()

    assert read("read_committed", 10) == sorted(b"committed-%d" % i for i in range(10))
    assert len(read("read_uncommitted", 16)) == 16
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert group_offsets(admin, group) == {(topic, 0): 3, (topic, 1): 4}


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
def test_consumer_lag_and_group_metrics(broker, bootstrap, topic):
    ck_create_topic(bootstrap, topic, partitions=2)
    ck_produce_all(ck_producer(bootstrap), topic, [{"partition": 0, "value": b"%d" % i} for i in range(100)])
    group = new_group("lag")
    commits_before = metric_value(broker, "sluice_group_commits_total")
    assert commits_before is not None, "sluice_group_commits_total missing"
    c = ck_consumer(bootstrap, **{"group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 40)], asynchronous=False)
    finally:
        c.close()
    wait_until(lambda: metric_value(broker, "sluice_consumer_lag", group=group, topic=topic, partition=0) == 60,
               10, what=f"sluice_consumer_lag{{group={group},partition=0}} == 60")
    assert metric_value(broker, "sluice_group_commits_total") >= commits_before + 1

    # A live member shows up in sluice_group_members and sluice_groups{state="Stable"}.
    m = Member("lag-member", bootstrap, group, topic)
    try:
        pump([m], lambda: m.assigned == {0, 1}, 20, "member assigned")
        wait_until(lambda: metric_value(broker, "sluice_group_members", group=group) == 1, 10,
                   what="sluice_group_members == 1")
        assert metric_value(broker, "sluice_groups", 0, state="Stable") >= 1
        pump([m], lambda: len(m.records) >= 60, 20, "remaining 60 records consumed")
        wait_until(lambda: metric_value(broker, "sluice_consumer_lag", group=group, topic=topic, partition=0) == 0,
                   10, what="lag back to 0 after consuming and committing")
    finally:
        m.close()


# ---------------------------------------------------------------------------
# kcat balanced consumer
# ---------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
def test_kcat_balanced_consumer_commits(bootstrap, topic):
    nparts = 3
    ck_create_topic(bootstrap, topic, partitions=nparts)
    written = produce_tagged(bootstrap, topic, nparts, 30, "kcat")
    group = new_group("kcat")
    proc = subprocess.run(
        ["kcat", "-b", bootstrap, "-G", group, topic, "-c", "30", "-f", "%p %o %s\\n",
         "-X", "auto.offset.reset=earliest", "-X", "session.timeout.ms=6000",
         "-X", "heartbeat.interval.ms=300", "-X", "auto.commit.interval.ms=200"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=45,
    )
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"kcat rc={proc.returncode}\nstdout: {out}\nstderr: {proc.stderr.decode(errors='replace')}"
    got = {}
    for line in out.splitlines():
        p, o, v = line.split(" ", 2)
        got[(int(p), int(o))] = v.encode()
    assert got == written

    c = ck_consumer(bootstrap, **{"group.id": group})
    try:
        committed = c.committed([TopicPartition(topic, p) for p in range(nparts)], timeout=T)
    finally:
        c.close()
    assert {tp.partition: tp.offset for tp in committed} == {p: 10 for p in range(nparts)}, committed
