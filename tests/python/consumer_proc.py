"""A confluent-kafka group consumer run as a separate process, so tests can
SIGKILL it; plus `ConsumerProc`, the test-side handle that starts it and
collects what it reports.

    python3 tests/python/consumer_proc.py --bootstrap HOST:PORT --group G --topic T \\
        [--instance-id ID] [--session-timeout-ms N] [--assignor NAME] [--conf k=v ...]
        [--commit-every N] [--process-delay-ms MS]

It subscribes to T, and for every record first "processes" it (sleeps
--process-delay-ms, prints a REC line) and then, every --commit-every records
of a partition, commits the next offset synchronously: at-least-once, so a
kill between the two steps makes the records be delivered again elsewhere.
One line per event on stdout (flushed at once):

    READY
    ASSIGN <p>,<p>,...          (partitions newly assigned, may be empty)
    REVOKE <p>,<p>,...
    LOST <p>,<p>,...
    REC <partition> <offset> <value>
    COMMITTED <partition> <next offset>
    COMMIT_FAILED <partition> <next offset> <error>
    ERROR <text>

SIGTERM closes the consumer cleanly (LeaveGroup) and exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _emit(*parts):
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--instance-id")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--assignor", default="range")
    ap.add_argument("--conf", action="append", default=[], help="extra librdkafka property k=v")
    ap.add_argument("--commit-every", type=int, default=1)
    ap.add_argument("--process-delay-ms", type=int, default=0)
    args = ap.parse_args(argv)

    from confluent_kafka import Consumer, KafkaException, TopicPartition

    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "client.id": f"consumer-proc-{os.getpid()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": args.session_timeout_ms,
        "heartbeat.interval.ms": 300,
        "max.poll.interval.ms": 30000,
        "partition.assignment.strategy": args.assignor,
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 10000,
        "topic.metadata.refresh.interval.ms": 2000,
    }
    if args.instance_id:
        conf["group.instance.id"] = args.instance_id
    for kv in args.conf:
        k, v = kv.split("=", 1)
        conf[k] = v

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def parts(ps):
        return ",".join(str(tp.partition) for tp in sorted(ps, key=lambda tp: tp.partition))

    c = Consumer(conf)
    uncommitted: dict[int, int] = {}  # partition -> records processed since its last commit
    c.subscribe(
        [args.topic],
        on_assign=lambda _c, ps: _emit("ASSIGN", parts(ps)),
        on_revoke=lambda _c, ps: _emit("REVOKE", parts(ps)),
        on_lost=lambda _c, ps: _emit("LOST", parts(ps)),
    )
    _emit("READY")
    try:
        while not stop.is_set():
            for m in c.consume(num_messages=50, timeout=0.1):
                if m.error():
                    _emit("ERROR", str(m.error()).replace("\n", " "))
                    continue
                if args.process_delay_ms:
                    time.sleep(args.process_delay_ms / 1000)
                value = (m.value() or b"").decode(errors="replace")
                _emit("REC", m.partition(), m.offset(), value)
                uncommitted[m.partition()] = uncommitted.get(m.partition(), 0) + 1
                if uncommitted[m.partition()] < args.commit_every:
                    continue
                uncommitted[m.partition()] = 0
                nxt = m.offset() + 1
                try:
                    c.commit(offsets=[TopicPartition(args.topic, m.partition(), nxt)], asynchronous=False)
                    _emit("COMMITTED", m.partition(), nxt)
                except KafkaException as e:
                    _emit("COMMIT_FAILED", m.partition(), nxt, str(e).replace("\n", " "))
    finally:
        c.close()
    return 0


class ConsumerProc:
    """Test-side handle: runs this script and parses its stdout in a thread."""

    def __init__(self, bootstrap, group, topic, *, instance_id=None, session_timeout_ms=6000,
                 assignor="range", conf=(), commit_every=1, process_delay_ms=0, log_path=None):
        cmd = [
            sys.executable, os.path.join(HERE, "consumer_proc.py"),
            "--bootstrap", bootstrap, "--group", group, "--topic", topic,
            "--session-timeout-ms", str(session_timeout_ms), "--assignor", assignor,
            "--commit-every", str(commit_every), "--process-delay-ms", str(process_delay_ms),
        ]
        if instance_id:
            cmd += ["--instance-id", instance_id]
        for kv in conf:
            cmd += ["--conf", kv]
        self.cmd = cmd
        self.lines: list[str] = []
        self.records: list[tuple[int, int, str]] = []  # (partition, offset, value)
        self.committed: dict[int, int] = {}
        self.assigned: set[int] = set()
        self.events: list[tuple[str, tuple]] = []  # ("ASSIGN"/"REVOKE"/"LOST", partitions)
        self._lock = threading.Lock()
        self._stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._lock:
                self.lines.append(line)
                kind, _, rest = line.partition(" ")
                if kind == "REC":
                    p, o, v = rest.split(" ", 2) if rest.count(" ") >= 2 else (*rest.split(" "), "")
                    self.records.append((int(p), int(o), v))
                elif kind == "COMMITTED":
                    p, o = rest.split()
                    self.committed[int(p)] = int(o)
                elif kind in ("ASSIGN", "REVOKE", "LOST"):
                    ps = tuple(int(x) for x in rest.split(",") if x.strip())
                    self.events.append((kind, ps))
                    if kind == "ASSIGN":
                        self.assigned |= set(ps)
                    else:
                        self.assigned -= set(ps)

    def snapshot(self):
        with self._lock:
            return {
                "records": list(self.records),
                "assigned": set(self.assigned),
                "events": list(self.events),
                "committed": dict(self.committed),
                "lines": list(self.lines),
            }

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        """SIGKILL: no LeaveGroup, no final commit."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def stop(self, timeout=15):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self._stderr is not subprocess.DEVNULL:
            self._stderr.close()
        return self.proc.returncode

    def describe(self):
        snap = self.snapshot()
        return f"cmd={' '.join(self.cmd)} rc={self.proc.poll()} last lines={snap['lines'][-15:]}"


if __name__ == "__main__":
    sys.exit(main())
