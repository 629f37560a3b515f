"""aiokafka (asyncio, pure Python) against one broker and a three-broker
cluster: a plain round trip through a consumer group, and its
transactional producer in a consume-transform-produce loop (output and
the group's offsets committed together; an aborted transaction visible to
read_uncommitted consumers only, its offsets never counted)."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from sluice_testlib import GROUP_BROKER_ARGS

SLUICE_BROKER_ARGS = GROUP_BROKER_ARGS  # picked up by conftest's module broker
SLUICE_TOPOLOGIES = ("one", "three")

TIMEOUT = 30


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topics(bootstrap, *topics, partitions=2):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    finally:
        await admin.close()


async def consume(consumer, n):
    """At least `n` records (and whatever else arrives in the next second)."""
    out = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    quiet_until = None
    while True:
        now = loop.time()
        if len(out) >= n:
            quiet_until = quiet_until or now + 1.0
            if now >= quiet_until:
                return out
        elif now >= deadline:
            raise AssertionError(f"only {len(out)} of {n} records consumed within {TIMEOUT}s")
        batches = await consumer.getmany(timeout_ms=300)
        for records in batches.values():
            out.extend(records)


async def read(bootstrap, topic, partitions, n, isolation):
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation,
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        return sorted(r.value for r in await consume(c, n))
    finally:
        await c.stop()


def test_aiokafka_group_roundtrip(bootstrap):
    async def run():
        topic = name("aio")
        await create_topics(bootstrap, topic)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for i in range(20):
                await producer.send(topic, b"v-%d" % i, partition=i % 2)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=name("aio-group"),
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    session_timeout_ms=6000, heartbeat_interval_ms=300)
        await consumer.start()
        try:
            got = await consume(consumer, 20)
            await consumer.commit()
            committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in range(2)}
        finally:
            await consumer.stop()
        assert sorted(r.value for r in got) == sorted(b"v-%d" % i for i in range(20))
        assert committed == {0: 10, 1: 10}

    asyncio.run(run())


def test_aiokafka_transactional_consume_transform_produce(bootstrap):
    async def run():
        source, sink, group = name("aio-in"), name("aio-out"), name("aio-txn")
        await create_topics(bootstrap, source, sink)
        plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await plain.start()
        try:
            for i in range(20):
                await plain.send(source, b"in-%d" % i, partition=i % 2)
            await plain.flush()
        finally:
            await plain.stop()

        consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group,
                                    isolation_level="read_committed", auto_offset_reset="earliest",
                                    enable_auto_commit=False, session_timeout_ms=6000,
                                    heartbeat_interval_ms=300)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=name("aio-tid"),
                                    request_timeout_ms=15000)
        await consumer.start()
        await producer.start()
        try:
            records = await consume(consumer, 20)
            assert len(records) == 20
            committed_ends = None
            # The first ten records' outputs and offsets committed; the
            # rest aborted.
            for batch, commit in ((records[:10], True), (records[10:], False)):
                ends = {}
                for r in batch:
                    tp = TopicPartition(r.topic, r.partition)
                    ends[tp] = max(ends.get(tp, 0), r.offset + 1)
                await producer.begin_transaction()
                for r in batch:
                    await producer.send(sink, r.value.replace(b"in-", b"out-"), partition=r.partition)
                await producer.send_offsets_to_transaction(
                    {tp: OffsetAndMetadata(o, "") for tp, o in ends.items()}, group)
                if commit:
                    await producer.commit_transaction()
                    committed_ends = ends
                else:
                    await producer.flush()
                    await producer.abort_transaction()
        finally:
            await producer.stop()
            await consumer.stop()

        want = sorted(r.value.replace(b"in-", b"out-") for r in records[:10])
        assert await read(bootstrap, sink, 2, 10, "read_committed") == want
        assert len(await read(bootstrap, sink, 2, 20, "read_uncommitted")) == 20
        check = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await check.start()
        try:
            got = {tp: await check.committed(tp) for tp in committed_ends}
        finally:
            await check.stop()
        assert got == committed_ends

    asyncio.run(run())
