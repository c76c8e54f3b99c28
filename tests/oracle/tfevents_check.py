#!/usr/bin/env python3
"""tests/oracle/tfevents_check.py — reads TensorBoard event files independently of the C writer and
checks them against the metrics records they should hold.

    tfevents_check.py EXPECT.jsonl FILE... [--side PREFIX STEP_KEY] [--allow-torn]

Every record's TFRecord framing is checked: the uint64 length, the masked CRC-32C of the length bytes,
the data, the masked CRC-32C of the data (CRC-32C computed here bit by bit from the reflected
polynomial 0x82F63B78). The data is parsed as a tensorflow `Event` with Google's protobuf runtime
(python3-protobuf), the messages built here from their field definitions (no hand decoding). The
first event of each file must be file_version "brain.Event:2"; the others carry scalars or a
SessionLog START, which drops every scalar read so far at its step or later, as TensorBoard does
(a run resumed from a checkpoint writes one at the first step it trains again).

EXPECT.jsonl holds metrics records (metrics.jsonl itself): every number but "step" must be a scalar of
that step, its value the number rounded to float32, and nothing else may be in the files. With
--side, keys starting with PREFIX are expected at the step the record's STEP_KEY names (held-out
evaluation of an earlier checkpoint), and STEP_KEY itself is not a scalar. Files are read in the
order given; a later file's scalar replaces an earlier one of the same step and tag (a resumed run).

--allow-torn: a last record cut short (a crash mid-write) is reported and ignored, not a failure.
Prints one line per problem and "tfevents_check: ok ..." at the end; exit 0 when all is well.
"""
import json
import math
import struct
import sys
import time

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def event_class():
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="tfevents_check_event.proto", package="tfcheck", syntax="proto3")

    def add(msg, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=None):
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name

    value = fd.message_type.add(name="Value")
    add(value, "tag", 1, F.TYPE_STRING)
    add(value, "simple_value", 2, F.TYPE_FLOAT)
    summary = fd.message_type.add(name="Summary")
    add(summary, "value", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".tfcheck.Value")
    event = fd.message_type.add(name="Event")
    add(event, "wall_time", 1, F.TYPE_DOUBLE)
    add(event, "step", 2, F.TYPE_INT64)
    add(event, "file_version", 3, F.TYPE_STRING)
    add(event, "summary", 5, F.TYPE_MESSAGE, type_name=".tfcheck.Summary")
    session_log = fd.message_type.add(name="SessionLog")
    add(session_log, "status", 1, F.TYPE_INT32)  # an enum on the wire: START = 1
    add(event, "session_log", 7, F.TYPE_MESSAGE, type_name=".tfcheck.SessionLog")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName("tfcheck.Event"))


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def read_file(path, Event, allow_torn, fails, scalars):
    data = open(path, "rb").read()
    pos = 0
    n = 0
    now = time.time()
    while pos < len(data):
        where = f"{path}: record {n} at byte {pos}"
        if len(data) - pos < 12:
            if allow_torn:
                print(f"{where}: torn tail of {len(data) - pos} bytes ignored")
                break
            fails.append(f"{where}: {len(data) - pos} bytes left, less than a header")
            break
        head = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", head)
        (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if len_crc != masked(crc32c(head)):
            fails.append(f"{where}: length CRC {len_crc:#x} != {masked(crc32c(head)):#x}")
            break
        if len(data) - pos < 16 + length:
            if allow_torn:
                print(f"{where}: torn record ({len(data) - pos} of {16 + length} bytes) ignored")
                break
            fails.append(f"{where}: {len(data) - pos} bytes left, the record needs {16 + length}")
            break
        body = data[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if data_crc != masked(crc32c(body)):
            fails.append(f"{where}: data CRC {data_crc:#x} != {masked(crc32c(body)):#x}")
        ev = Event()
        ev.ParseFromString(body)
        if not (1.5e9 < ev.wall_time < now + 60):
            fails.append(f"{where}: wall_time {ev.wall_time} is not a time of today's world")
        if n == 0:
            if ev.file_version != "brain.Event:2" or ev.HasField("summary"):
                fails.append(f"{where}: the first event is not file_version brain.Event:2 alone ({ev})")
        else:
            if ev.file_version:
                fails.append(f"{where}: file_version {ev.file_version!r} in a later event")
            if ev.HasField("session_log"):
                if ev.session_log.status != 1 or ev.HasField("summary"):
                    fails.append(f"{where}: a session_log event that is not START alone ({ev})")
                dropped = [k for k in scalars if k[0] >= ev.step]
                for k in dropped:
                    del scalars[k]
                print(f"{where}: restart at step {ev.step}: {len(dropped)} scalars of earlier writes dropped")
            for v in ev.summary.value:
                scalars[(ev.step, v.tag)] = v.simple_value
        pos += 16 + length
        n += 1
    return n


def main(argv):
    args = list(argv[1:])
    allow_torn = "--allow-torn" in args
    if allow_torn:
        args.remove("--allow-torn")
    side = None
    if "--side" in args:
        i = args.index("--side")
        side = (args[i + 1], args[i + 2])
        del args[i:i + 3]
    if len(args) < 2:
        print(__doc__)
        return 2
    expect_path, files = args[0], args[1:]
    Event = event_class()
    fails = []
    scalars = {}
    records = sum(read_file(p, Event, allow_torn, fails, scalars) for p in files)
    want = {}
    for line in open(expect_path):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a live file
        step = rec["step"]
        side_step = rec.get(side[1]) if side else None
        for k, v in rec.items():
            if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if side and k == side[1]:
                continue
            at = side_step if side and side_step is not None and k.startswith(side[0]) else step
            want[(at, k)] = f32(float(v))
    for key, v in sorted(want.items()):
        if key not in scalars:
            fails.append(f"step {key[0]} tag {key[1]}: missing from the event files")
        elif not (scalars[key] == v or (math.isnan(v) and math.isnan(scalars[key]))):
            fails.append(f"step {key[0]} tag {key[1]}: {scalars[key]!r} != {v!r}")
    for key in sorted(set(scalars) - set(want)):
        fails.append(f"step {key[0]} tag {key[1]}: in the event files but not in {expect_path}")
    for f in fails[:30]:
        print(f)
    if fails:
        print(f"tfevents_check: {len(fails)} problems")
        return 1
    steps = len({s for s, _ in scalars})
    print(f"tfevents_check: ok {records} records, {len(scalars)} scalars over {steps} steps in {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
