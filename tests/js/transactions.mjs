// KafkaJS's transactional producer against Sluice, driven by
// tests/python/test_kafkajs.py: a consume-transform-produce loop over
// SOURCE (already holding `in-<i>` records) into SINK, with the group's
// offsets sent in each transaction. The first transaction (the first
// half of the records) is committed, the second aborted. Prints one JSON
// line: the records read and the offsets each transaction covered; the
// python side checks what read_committed consumers and the group see.
//
// usage: node transactions.mjs BOOTSTRAP SOURCE SINK GROUP COUNT
import kafkajs from 'kafkajs';

const { Kafka, logLevel } = kafkajs;
const [bootstrap, source, sink, group, countArg] = process.argv.slice(2);
const count = Number(countArg);
const kafka = new Kafka({
  clientId: 'sluice-kafkajs-test',
  brokers: bootstrap.split(','),
  logLevel: logLevel.WARN,
  retry: { retries: 10 },
});

const consumer = kafka.consumer({ groupId: group, readUncommitted: false, sessionTimeout: 6000, heartbeatInterval: 300 });
const producer = kafka.producer({
  transactionalId: `${group}-tid`,
  idempotent: true,
  maxInFlightRequests: 1,
});

const records = [];
await consumer.connect();
await consumer.subscribe({ topic: source, fromBeginning: true });
const done = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`only ${records.length} of ${count} records within 30 s`)), 30000);
  consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      records.push({ partition, offset: Number(message.offset), value: message.value.toString() });
      if (records.length >= count) {
        clearTimeout(timer);
        resolve();
      }
    },
  });
});
await done;
await consumer.stop();

await producer.connect();
const ends = [];
for (const [half, commit] of [[records.slice(0, count / 2), true], [records.slice(count / 2), false]]) {
  const byPartition = new Map();
  for (const r of half) {
    byPartition.set(r.partition, Math.max(byPartition.get(r.partition) ?? 0, r.offset + 1));
  }
  const txn = await producer.transaction();
  await txn.send({
    topic: sink,
    messages: half.map((r) => ({ partition: r.partition, value: r.value.replace('in-', 'out-') })),
  });
  await txn.sendOffsets({
    consumerGroupId: group,
    topics: [{
      topic: source,
      partitions: [...byPartition].map(([partition, offset]) => ({ partition, offset: String(offset) })),
    }],
  });
  if (commit) {
    await txn.commit();
  } else {
    await txn.abort();
  }
  ends.push(Object.fromEntries(byPartition));
}
await producer.disconnect();
await consumer.disconnect();
console.log(JSON.stringify({ records, committed: ends[0], aborted: ends[1] }));
