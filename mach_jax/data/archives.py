"""The files inside a dataset download, and the XC files written from them.

A download is a zip, a tar (plain or compressed), or one data file (plain or gzip). Each file in
it is a `Member`: `list_members` lists them, `locate_members` finds the ones a registry layout
names (by base name, any folder, with or without ``.gz``), `open_member` streams one, gunzipped
if it is gzip, and `convert_members` writes ``train.txt`` and ``test.txt`` from them: N, D, L of
every header checked against the registry, for data + split-file layouts the rows that one split
column names, and every problem reported with its file and line. Members stream line by line,
never read whole: a line or a member over its `Limits` is refused as soon as it is met.
"""

from __future__ import annotations

import array
import contextlib
import gzip
import io
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

from mach_jax.data.files import atomic_output, is_gzip, read_lines
from mach_jax.data.registry import DatasetInfo
from mach_jax.data.xc_header import parse_header, show, too_long
from mach_jax.errors import DataFormatError, DatasetError

# What a damaged or truncated download raises while it is listed or read.
DAMAGED = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile)


class Limits(NamedTuple):
    """What one member of a download may hold, checked while it streams: ``line``, the longest
    line in bytes (an XC line is one point: 64 MiB is thousands of times a real one), and
    ``member``, its unpacked size in bytes (64 GiB is several times the largest XC dataset)."""

    line: int = 64 << 20
    member: int = 64 << 30


_LIMIT_HINTS = ("; if it is one, pass a larger --max-line-bytes",
                 "; if it is that large, pass a larger --max-member-bytes")


class Member(NamedTuple):
    """One file of a download.

    Attributes:
      path: the downloaded file.
      kind: "zip" or "tar" for a member of that archive; "file" when the download is the data.
      name: the member's name in the archive (for "file": the name the data file goes by).
    """

    path: Path
    kind: str
    name: str

    @property
    def where(self) -> str:
        """How messages name it: ``path`` for a plain file, ``path:name`` inside an archive."""
        return str(self.path) if self.kind == "file" else f"{self.path}:{self.name}"


def list_members(path: Path, single_name: str) -> list[Member]:
    """The files of a downloaded archive, or the download itself when it is a data file.

    Args:
      path: the downloaded file.
      single_name: the name the download goes by when it is a single (possibly gzipped) file.

    Returns:
      One `Member` per file of a zip or tar (folders left out), or ``[Member(path, "file",
      single_name)]``.

    Raises:
      DatasetError: the download is an HTML page.
      One of `DAMAGED`: a zip without its central directory, or a tar cut short.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [Member(path, "zip", i.filename) for i in z.infolist() if not i.is_dir()]
    if head.startswith(b"PK\x03\x04"):
        raise zipfile.BadZipFile("no central directory")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise DatasetError(f"{path}: is an HTML page, not a dataset; fetch the file in a browser "
                           "and pass its path with --url")
    try:
        with tarfile.open(path, "r:*") as t:
            entries = t.getmembers()
        return _tar_files(path, entries)
    except tarfile.ReadError:
        single = Member(path, "file", single_name)
        with open_member(single) as stream:
            if stream.read(512)[257:262] == b"ustar":  # a tar after all, cut short
                raise
        return [single]


def _tar_files(path: Path, entries: list[tarfile.TarInfo]) -> list[Member]:
    """The regular files of a tar; a name that a link or folder shares with one is refused: the
    tar holds two things of that name, and reading it by name would read the other."""
    files = [Member(path, "tar", m.name) for m in entries if m.isfile()]
    names = {m.name for m in files}
    clash = sorted({m.name for m in entries if not m.isfile() and m.name in names})
    if clash:
        raise DatasetError(f"{path}: the tar holds a file and a link or folder both named "
                           f"{clash[0]}; unpack it by hand and pass the data files with --url")
    return files


@contextlib.contextmanager
def open_member(member: Member) -> Iterator[BinaryIO]:
    """A binary stream over one file of a download, gunzipped if it is gzip."""
    with contextlib.ExitStack() as stack:
        if member.kind == "zip":
            archive = stack.enter_context(zipfile.ZipFile(member.path))
            # Buffered: readline with a size limit is then done in C, 2-4x faster.
            stream = stack.enter_context(io.BufferedReader(archive.open(member.name), 1 << 20))
        elif member.kind == "tar":
            stream = stack.enter_context(tarfile.open(member.path, "r:*")).extractfile(member.name)
        else:
            stream = stack.enter_context(open(member.path, "rb"))
        if is_gzip(stream.peek(2)):
            stream = stack.enter_context(gzip.GzipFile(fileobj=stream))
        yield stream


def _base(name: str) -> str:
    """The file name without folders, ``.gz`` or case: what layouts match on."""
    name = PurePosixPath(name).name.lower()
    return name.removesuffix(".gz")


def locate_members(members: list[Member], info: DatasetInfo) -> dict[str, Member]:
    """The member for each role of the dataset's layout, matched by base name.

    Args:
      members: every file of every download of the dataset.
      info: the registry entry whose ``layout`` names the files of each role, best name first.

    Returns:
      ``{role: member}``, e.g. ``{"train": ..., "test": ...}``.

    Raises:
      DatasetError: no file for a role, or two files with its best-matching name.
    """
    found = {}
    for role, names in info.layout.roles().items():
        wanted = [_base(n) for n in names]
        hits = sorted((m for m in members if _base(m.name) in wanted),
                      key=lambda m: (wanted.index(_base(m.name)), str(m.path), m.kind, m.name))
        if not hits:
            shown = ", ".join(m.name for m in members[:8]) + (", ..." if len(members) > 8 else "")
            raise DatasetError(f"{info.name}: no file named {' or '.join(names)} in the download "
                               f"(it holds: {shown or 'nothing'})")
        best = [m for m in hits if _base(m.name) == _base(hits[0].name)]
        if len(best) > 1:
            raise DatasetError(f"{info.name}: {len(best)} files named "
                               f"{names[wanted.index(_base(best[0].name))]} in the download: "
                               f"{', '.join(m.name for m in best)}")
        found[role] = best[0]
    return found


def _data_lines(lines: Iterable[tuple[int, bytes]], where: str, num_points: int
                ) -> Iterator[bytes]:
    """The N points of an XC file after its header, as canonical newline-terminated lines:
    trailing spaces, tabs and CRs dropped, a leading space for a point without labels, otherwise
    as they are (the strict reader checks ids later). ``lines``: the (number, line) pairs after
    the header; ``where``: the file, as messages name it; ``num_points``: N, from the header.

    Raises:
      DatasetError: a blank line, or more or fewer than N points.
    """
    count = 0
    for lineno, raw in lines:
        line = raw.rstrip(b"\r\n")
        if count == num_points:
            if line.strip():
                raise DatasetError(f"{where}:{lineno}: data after the {num_points} points "
                                   "declared in the header")
            continue
        body = line.rstrip(b" \t")
        if not body and not line:
            raise DatasetError(f"{where}:{lineno}: blank line")
        if b":" in body.partition(b" ")[0]:  # features only: the point has no labels
            body = b" " + body
        count += 1
        yield (body or b" ") + b"\n"
    if count < num_points:
        raise DatasetError(f"{where}: header declares {num_points} points but the file has "
                           f"{count} data lines")


def _read_split(lines: Iterable[tuple[int, bytes]], where: str, column: int, num_rows: int
                ) -> list[int]:
    """The 0-based row ids, in the file's order, that split ``column`` (1-based) of a split
    file names, from its numbered ``lines`` (one column per split, 1-based row numbers in a data
    file of ``num_rows`` points); ``where`` names the file in messages.

    Raises:
      DatasetError: a line without that column, a row outside 1..num_rows, or a row twice.
    """
    ids, seen = [], set()
    for lineno, line in lines:
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < column:
            raise DatasetError(f"{where}:{lineno}: {len(tokens)} columns, no split {column}")
        token = tokens[column - 1]
        row = int(token) if token.isdigit() and not too_long(token) else 0
        if not 1 <= row <= num_rows:
            raise DatasetError(f"{where}:{lineno}: {show(token)} is not a row number in 1..{num_rows}")
        if row in seen:
            raise DatasetError(f"{where}:{lineno}: row {row} is listed twice")
        seen.add(row)
        ids.append(row - 1)
    return ids


def _read_header(lines: Iterator[tuple[int, bytes]], member: Member) -> tuple[int, int, int]:
    """(N, D, L) from the first line of an XC member."""
    return parse_header(next(lines, (1, b""))[1], member.where)


def _check_header(header, expected, where: str, name: str) -> None:
    """Refuses a header (N, D, L) that differs from the registry's, naming each difference."""
    wrong = [f"{field} {got} in the file, {want} in the registry"
             for field, got, want in zip(("points", "features", "labels"), header, expected)
             if got != want]
    if wrong:
        raise DatasetError(f"{where}: header does not match the registry's {name}: "
                           + "; ".join(wrong))


def _write_xc(path: Path, header: Sequence[int], lines: Iterable[bytes]) -> None:
    """Writes the header (N, D, L) and the N lines, atomically."""
    with atomic_output(path) as f:
        f.write(b"%d %d %d\n" % tuple(header))
        f.writelines(lines)


def _convert_train_test(info: DatasetInfo, located: dict[str, Member], out_dir: Path,
                        limits: Limits) -> None:
    """Copies the train and test files of a train + test layout, checking their headers."""
    for part, n in (("train", info.num_train), ("test", info.num_test)):
        member = located[part]
        with open_member(member) as stream:
            lines = read_lines(stream, member.where, *limits, _LIMIT_HINTS)
            header = _read_header(lines, member)
            _check_header(header, (n, info.num_features, info.num_labels), member.where,
                          info.name)
            _write_xc(out_dir / f"{part}.txt", header, _data_lines(lines, member.where, header[0]))


def _spool(lines: Iterable[bytes], spool: BinaryIO) -> Callable[[int], bytes]:
    """Writes the lines to spool (a file, not memory); returns row id -> line, read back."""
    ends = array.array("q", [0])
    for line in lines:
        spool.write(line)
        ends.append(ends[-1] + len(line))

    def row(i: int) -> bytes:
        spool.seek(ends[i])
        return spool.read(ends[i + 1] - ends[i])
    return row


def _convert_splits(info: DatasetInfo, located: dict[str, Member], out_dir: Path, split: int,
                    limits: Limits) -> None:
    """Writes the train and test points that split column `split` names in a data file."""
    with tempfile.TemporaryFile(dir=out_dir) as spool:
        member = located["data"]
        with open_member(member) as stream:
            lines = read_lines(stream, member.where, *limits, _LIMIT_HINTS)
            header = _read_header(lines, member)
            _check_header(header, (info.num_train + info.num_test, info.num_features,
                                   info.num_labels), member.where, info.name)
            row = _spool(_data_lines(lines, member.where, header[0]), spool)
        for part, n in (("train", info.num_train), ("test", info.num_test)):
            member = located[f"{part}_split"]
            with open_member(member) as stream:
                lines = read_lines(stream, member.where, *limits, _LIMIT_HINTS)
                ids = _read_split(lines, member.where, split, header[0])
            if len(ids) != n:
                raise DatasetError(f"{member.where}: split {split} lists {len(ids)} points but "
                                   f"the registry's {info.name} has {n} {part} points")
            _write_xc(out_dir / f"{part}.txt", (n, header[1], header[2]), map(row, ids))


def convert_members(info: DatasetInfo, located: dict[str, Member], out_dir: Path,
                    split: int, limits: Limits = Limits()) -> None:
    """Writes ``out_dir/train.txt`` and ``test.txt`` from a download's located members.

    Args:
      info: the registry entry; every header's N, D, L must match it.
      located: the member of each role of the entry's layout (see `locate_members`).
      out_dir: where the two XC files go, each replaced atomically.
      split: the 1-based split column (data + split-file layouts only).
      limits: the longest line and the largest member, checked while they stream.

    Raises:
      DatasetError: a malformed or mismatched header, bad data lines or split files, a line or
        member over the limits.
      One of `DAMAGED`: a damaged archive or gzip stream.
    """
    try:
        if info.layout.uses_splits:
            _convert_splits(info, located, out_dir, split, limits)
        else:
            _convert_train_test(info, located, out_dir, limits)
    except DataFormatError as error:  # the header parser's and the line reader's
        raise DatasetError(str(error)) from None
