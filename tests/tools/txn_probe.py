"""Reads one partition of a transactional topic from several start offsets, read_committed and
read_uncommitted, with a plain librdkafka consumer (confluent-kafka): shows whether a broker
hides committed records from a fetch that starts in the middle of the log.

    $SLUICE_VENV/bin/python tests/tools/txn_probe.py BOOTSTRAP TOPIC PARTITION [OFFSET ...]

A correct broker gives every start offset the committed records at or after it. noida-db 0.2.3
(the test broker) gives none to a fetch that starts after an aborted transaction (a killed
daemon's), see docs/stream.md, "Sinks"."""
import sys, time
from confluent_kafka import Consumer, TopicPartition

bootstrap, topic, partition = sys.argv[1], sys.argv[2], int(sys.argv[3])
starts = [int(s) for s in sys.argv[4:]] or [0]

def read(start, isolation):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{time.time()}",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, partition, start)])
    offsets = []
    deadline = time.time() + 20
    while time.time() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                break
            print("error", m.error()); continue
        offsets.append(m.offset())
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, partition))
    c.close()
    return offsets, (lo, hi)

for start in starts:
    for iso in ("read_committed", "read_uncommitted"):
        offs, wm = read(start, iso)
        print(f"start={start} {iso}: {len(offs)} records, first={offs[:1]} last={offs[-1:]} watermarks={wm}")
