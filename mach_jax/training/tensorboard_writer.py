"""A light TensorBoard event-file writer: scalars only, no TensorFlow or TensorBoard needed.

An event file is a sequence of TFRecords, each framing one serialised ``Event`` protobuf:

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little-endian). The messages are encoded by hand; only these fields are written:

    Event      { double wall_time = 1; int64 step = 2; string file_version = 3;
                 Summary summary = 5; SessionLog session_log = 7; }
    Summary    { repeated Value value = 1; }
    Value      { string tag = 1; float simple_value = 2; }
    SessionLog { SessionStatus status = 1; }            // START = 1

The first event of a file carries ``file_version = "brain.Event:2"``. A ``SessionLog.START`` at
step s tells TensorBoard to drop the events of step >= s that earlier files hold (it purges
"orphaned" data after a restart), which is how a resumed run hides what it logged after its
last checkpoint.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from mach_jax.data.files import open_state_file

FILE_VERSION = "brain.Event:2"
SESSION_START = 1


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 3720) of ``data``, as an unsigned 32-bit integer."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: the CRC rotated right by 15 bits plus a constant, mod 2**32."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord framing ``data``."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


# ---- protobuf wire format (only what Event needs) ----

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
    """A serialised ``Event`` with at most one of file_version, scalars or a SessionLog.START."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items())
        out += _bytes_field(5, values)
    if session_start:
        out += _bytes_field(7, _key(1, 0) + _varint(SESSION_START))
    return out


class EventFileWriter:
    """Appends scalar events to a new event file in ``logdir`` (one file per writer).

    File names sort in the order the writers were opened, as TensorBoard reads them:
    ``events.out.tfevents.<unix seconds>.<files already there>.<host>.<pid>``.

    Args:
      logdir: the folder (created if missing); TensorBoard treats each folder as one run.
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        existing = sum(1 for p in self.logdir.iterdir() if "tfevents" in p.name)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{existing:04d}."
                f"{socket.gethostname()}.{os.getpid()}")
        self.path = self.logdir / name
        self._file = open_state_file(self.path, text=False, exclusive=True)
        self._write(encode_event(time.time(), 0, file_version=FILE_VERSION))

    def _write(self, event: bytes) -> None:
        self._file.write(tfrecord(event))
        self._file.flush()  # a crash loses at most the event being written

    def add_scalars(self, step: int, scalars: dict[str, float], wall_time: float | None = None) -> None:
        """One event at ``step`` holding a simple_value per tag."""
        if scalars:
            self._write(encode_event(time.time() if wall_time is None else wall_time, step,
                                     scalars={tag: float(v) for tag, v in scalars.items()}))

    def add_session_start(self, step: int, wall_time: float | None = None) -> None:
        """A SessionLog.START at ``step``: TensorBoard drops earlier files' events of step >= step."""
        self._write(encode_event(time.time() if wall_time is None else wall_time, step,
                                 session_start=True))

    def close(self) -> None:
        self._file.close()
