"""The metrics log: JSON lines, TensorBoard event files (checked by an independent decoder and,
when installed, by TensorBoard itself), resume semantics, and its use by the trainer."""

import struct

import pytest

from mach_jax import get_preset
from mach_jax import experiment
from mach_jax.data import sources
from mach_jax.training import loop as trainer
from mach_jax.training.metric_log import MetricLog, read_records
from mach_jax.training.tensorboard_writer import EventFileWriter, crc32c, masked_crc32c


# ---- an independent reader: bitwise CRC-32C, TFRecord framing, protobuf wire format ----

def slow_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def slow_masked(data: bytes) -> int:
    crc = slow_crc32c(data)
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) % 2**32


def read_tfrecords(path) -> list[bytes]:
    blob, records, at = path.read_bytes(), [], 0
    while at < len(blob):
        (length,) = struct.unpack_from("<Q", blob, at)
        (length_crc,) = struct.unpack_from("<I", blob, at + 8)
        assert length_crc == slow_masked(blob[at:at + 8])
        data = blob[at + 12:at + 12 + length]
        (data_crc,) = struct.unpack_from("<I", blob, at + 12 + length)
        assert data_crc == slow_masked(data)
        records.append(data)
        at += 16 + length
    assert at == len(blob)
    return records


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def read_message(data: bytes) -> list[tuple[int, int, object]]:
    """[(field number, wire type, raw value)]: int for varints, bytes otherwise."""
    fields, at = [], 0
    while at < len(data):
        key, at = read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = read_varint(data, at)
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        elif wire == 2:
            length, at = read_varint(data, at)
            value, at = data[at:at + length], at + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((number, wire, value))
    return fields


def decode_event(data: bytes) -> dict:
    """Event {wall_time=1 double, step=2 int64, file_version=3, summary=5, session_log=7}."""
    event = {"scalars": {}}
    for number, wire, value in read_message(data):
        if number == 1:
            assert wire == 1
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2:
            assert wire == 0
            event["step"] = value
        elif number == 3:
            event["file_version"] = value.decode()
        elif number == 5:
            for v_number, _, v_value in read_message(value):
                assert v_number == 1  # Summary.value
                parts = {n: (w, x) for n, w, x in read_message(v_value)}
                assert parts[2][0] == 5  # simple_value is a fixed32 float
                event["scalars"][parts[1][1].decode()] = struct.unpack("<f", parts[2][1])[0]
        elif number == 7:
            event["session_log"] = dict((n, x) for n, _, x in read_message(value))
        else:
            raise AssertionError(f"unexpected Event field {number}")
    return event


def read_events(logdir) -> list[dict]:
    files = sorted(p for p in logdir.iterdir() if "tfevents" in p.name)
    return [decode_event(record) for path in files for record in read_tfrecords(path)]


# ---- CRC-32C and the event file ----

@pytest.mark.parametrize("data, expected", [
    (b"", 0),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),  # RFC 3720 B.4
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_matches_the_rfc_3720_vectors(data, expected):
    assert crc32c(data) == expected == slow_crc32c(data)


def test_masked_crc_of_long_data_matches_the_bitwise_reference():
    data = bytes(range(256)) * 5
    assert masked_crc32c(data) == slow_masked(data)


def test_event_file_decodes_to_what_was_written(tmp_path):
    writer = EventFileWriter(tmp_path)
    writer.add_scalars(5, {"loss/mean": 1.5, "eval/P@1": 0.25}, wall_time=123.5)
    writer.add_scalars(2**40, {"big": -3.0})
    writer.add_session_start(7, wall_time=124.0)
    writer.close()
    assert writer.path.name.startswith("events.out.tfevents.")
    first, scalars, big, start = read_events(tmp_path)
    assert first["file_version"] == "brain.Event:2" and first["step"] == 0 and first["wall_time"] > 1e9
    assert scalars == {"wall_time": 123.5, "step": 5, "scalars": {"loss/mean": 1.5, "eval/P@1": 0.25}}
    assert big["step"] == 2**40 and big["scalars"] == {"big": -3.0}
    assert start == {"wall_time": 124.0, "step": 7, "scalars": {}, "session_log": {1: 1}}  # START


# ---- MetricLog: records, resume ----

def write_session(workdir, start, steps, evals=(), loss_offset=0.0):
    with MetricLog(workdir, start, steps_per_epoch=10) as log:
        for step in steps:
            log.write("train", step, loss=step + loss_offset, member_loss={0: step + loss_offset},
                      examples_per_sec=100.0, learning_rate=0.125)
        for step in evals:
            log.write("eval", step, final=False, **{"P@1": step / 80})


def test_records_reach_jsonl_and_tensorboard_alike(tmp_path):
    write_session(tmp_path, 0, [5, 10], evals=[10])
    records = read_records(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == [("start", 0), ("train", 5), ("train", 10),
                                                         ("eval", 10)]
    assert records[1]["epoch"] == 0.5 and records[1]["member_loss"] == {"0": 5.0}
    events = [e for e in read_events(tmp_path / "tensorboard") if e["scalars"]]
    assert events[0]["scalars"] == {"loss/mean": 5.0, "loss/member_0": 5.0,
                                    "train/examples_per_sec": 100.0, "train/learning_rate": 0.125,
                                    "train/epoch": 0.5}
    assert events[0]["wall_time"] == records[1]["wall_time"]
    assert events[2] == {"wall_time": records[3]["wall_time"], "step": 10, "scalars": {"eval/P@1": 0.125}}


def test_resume_appends_and_supersedes_what_followed_the_checkpoint(tmp_path):
    write_session(tmp_path, 0, [5, 10, 15, 20], evals=[10, 20])  # crashed; last checkpoint: 10
    before = (tmp_path / "metrics.jsonl").read_text()
    write_session(tmp_path, 10, [15, 20], evals=[10, 20], loss_offset=0.5)
    after = (tmp_path / "metrics.jsonl").read_text()
    assert after.startswith(before)  # appended, never truncated
    records = read_records(tmp_path / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    assert train == [(5, 5.0), (10, 10.0), (15, 15.5), (20, 20.5)]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20]  # the step-10 one once
    assert [r["step"] for r in records if r["kind"] == "start"] == [0, 10]
    # TensorBoard: the new file starts with a SessionLog.START at step 11 (purging 15, 20).
    events = read_events(tmp_path / "tensorboard")
    assert [e["step"] for e in events if "session_log" in e] == [1, 11]
    new_file = events[events.index(next(e for e in events if e.get("session_log") and e["step"] == 11)):]
    assert [(e["step"], e["scalars"].get("loss/mean")) for e in new_file if e["scalars"]] == [
        (15, 15.5), (20, 20.5), (20, None)]


def test_a_torn_last_line_is_skipped_and_does_not_swallow_the_next_record(tmp_path):
    write_session(tmp_path, 0, [5])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    write_session(tmp_path, 5, [10])
    assert [(r["kind"], r["step"]) for r in read_records(tmp_path / "metrics.jsonl")] == [
        ("start", 0), ("train", 5), ("start", 5), ("train", 10)]


def test_tensorboard_reads_the_event_files_and_purges_superseded_steps(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    write_session(tmp_path, 0, [5, 10, 15, 20], evals=[10])
    write_session(tmp_path, 10, [15, 20, 25], evals=[20], loss_offset=0.5)
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    assert {"loss/mean", "loss/member_0", "train/examples_per_sec", "eval/P@1"} <= set(
        accumulator.Tags()["scalars"])
    assert [(e.step, e.value) for e in accumulator.Scalars("loss/mean")] == [
        (5, 5.0), (10, 10.0), (15, 15.5), (20, 20.5), (25, 25.5)]
    assert [e.step for e in accumulator.Scalars("eval/P@1")] == [10, 20]


# ---- the trainer's log ----

TINY = get_preset("tiny")


def test_training_logs_loss_and_evaluations_and_a_rerun_adds_no_duplicates(tmp_path):
    workdir = tmp_path / "run"
    trainer.train(TINY.replace(train={"epochs": 1}), workdir, sources.load_datasets(TINY.data)[0],
                  progress=False)
    config = TINY.replace(train={"epochs": 3, "eval_every_epochs": 1})
    metrics = experiment.train_and_evaluate(config, workdir, progress=False)
    records = read_records(workdir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]  # 10 steps per epoch
    assert {r["learning_rate"] for r in train} == {TINY.train.learning_rate}
    assert all(set(r["member_loss"]) == {"0", "1", "2", "3"} and r["examples_per_sec"] > 0 for r in train)
    assert all(r["loss"] == pytest.approx(sum(r["member_loss"].values()) / 4) for r in train)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [(r["step"], r["epoch"], r["final"]) for r in evals] == [(20, 2.0, False), (30, 3.0, True)]
    assert {k: evals[-1][k] for k in metrics} == metrics
    # Re-running the finished run evaluates again, but the log keeps the first final record.
    experiment.train_and_evaluate(config, workdir, progress=False)
    again = read_records(workdir / "metrics.jsonl")
    assert [r for r in again if r["kind"] != "start"] == [r for r in records if r["kind"] != "start"]
    assert [r["step"] for r in again if r["kind"] == "start"] == [0, 10, 30]
    steps = [e["step"] for e in read_events(workdir / "tensorboard") if "loss/mean" in e["scalars"]]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_the_logged_learning_rate_follows_the_schedule(tmp_path):
    config = TINY.replace(train={"epochs": 2, "lr_schedule": "linear", "warmup_steps": 4})
    trainer.train(config, tmp_path / "run", sources.load_datasets(TINY.data)[0], progress=False)
    train = [r for r in read_records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    peak, total = TINY.train.learning_rate, 20  # 10 steps per epoch
    # Step s is the update after s - 1 others: warm-up over 4, then linear decay to 0 at step 20.
    expected = {s: peak * ((s - 1) / 4 if s - 1 < 4 else 1 - (s - 1 - 4) / (total - 4)) for s in (5, 10, 15, 20)}
    assert {r["step"]: pytest.approx(r["learning_rate"]) for r in train} == expected
