"""The files inside a dataset download, and the XC files written from them.

A download is a zip, a tar (plain or compressed), or one data file (plain or gzip). Each file in
it is a `Member`: `list_members` lists them, `locate_members` finds the ones a registry layout
names (by base name, any folder, with or without ``.gz``), `open_member` streams one, gunzipped
if it is gzip, and `convert_members` writes ``train.txt`` and ``test.txt`` from them: N, D, L of
every header checked against the registry, for data + split-file layouts the rows that one split
column names, and every problem reported with its file and line.
"""

from __future__ import annotations

import contextlib
import gzip
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

from mach_jax.data.files import atomic_output, is_gzip
from mach_jax.data.registry import DatasetInfo
from mach_jax.data.xc_header import parse_header
from mach_jax.errors import DataFormatError, DatasetError

# What a damaged or truncated download raises while it is listed or read.
DAMAGED = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile)


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
            return [Member(path, "tar", m.name) for m in t.getmembers() if m.isfile()]
    except tarfile.ReadError:
        single = Member(path, "file", single_name)
        with open_member(single) as stream:
            if stream.read(512)[257:262] == b"ustar":  # a tar after all, cut short
                raise
        return [single]


@contextlib.contextmanager
def open_member(member: Member) -> Iterator[BinaryIO]:
    """A binary stream over one file of a download, gunzipped if it is gzip."""
    with contextlib.ExitStack() as stack:
        if member.kind == "zip":
            archive = stack.enter_context(zipfile.ZipFile(member.path))
            stream = stack.enter_context(archive.open(member.name))
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


def _data_lines(stream: Iterable[bytes], where: str, num_points: int) -> Iterator[bytes]:
    """The points of an XC file after its header, as canonical newline-terminated lines.

    Trailing spaces, tabs and CRs are dropped and a point without labels gets its leading space;
    the lines are otherwise as they are (the strict reader checks ids later).

    Args:
      stream: the file's lines after the header.
      where: the file, as messages name it.
      num_points: N, from the header.

    Yields:
      N lines.

    Raises:
      DatasetError: a blank line, or more or fewer than N points.
    """
    count = 0
    for lineno, raw in enumerate(stream, start=2):
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


def _read_split(stream: Iterable[bytes], where: str, column: int, num_rows: int) -> list[int]:
    """The rows one split of a split file names (one column per split, 1-based row numbers).

    Args:
      stream: the split file's lines.
      where: the file, as messages name it.
      column: the 1-based split column.
      num_rows: N of the data file the rows refer to.

    Returns:
      0-based row ids, in the file's order.

    Raises:
      DatasetError: a line without that column, a row outside 1..num_rows, or a row twice.
    """
    ids, seen = [], set()
    for lineno, line in enumerate(stream, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < column:
            raise DatasetError(f"{where}:{lineno}: {len(tokens)} columns, no split {column}")
        token = tokens[column - 1]
        row = int(token) if token.isdigit() else 0
        if not 1 <= row <= num_rows:
            raise DatasetError(f"{where}:{lineno}: {token.decode('latin-1')!r} is not a row "
                               f"number in 1..{num_rows}")
        if row in seen:
            raise DatasetError(f"{where}:{lineno}: row {row} is listed twice")
        seen.add(row)
        ids.append(row - 1)
    return ids


def _read_header(stream: BinaryIO, member: Member) -> tuple[int, int, int]:
    """(N, D, L) from the first line of an XC member."""
    try:
        return parse_header(stream.readline(), member.where)
    except DataFormatError as error:
        raise DatasetError(str(error)) from None


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


def _convert_train_test(info: DatasetInfo, located: dict[str, Member], out_dir: Path) -> None:
    """Copies the train and test files of a train + test layout, checking their headers."""
    for part, n in (("train", info.num_train), ("test", info.num_test)):
        member = located[part]
        with open_member(member) as stream:
            header = _read_header(stream, member)
            _check_header(header, (n, info.num_features, info.num_labels), member.where,
                          info.name)
            lines = _data_lines(stream, member.where, header[0])
            _write_xc(out_dir / f"{part}.txt", header, lines)


def _convert_splits(info: DatasetInfo, located: dict[str, Member], out_dir: Path,
                    split: int) -> None:
    """Writes the train and test points that split column `split` names in a data file."""
    member = located["data"]
    with open_member(member) as stream:
        header = _read_header(stream, member)
        _check_header(header, (info.num_train + info.num_test, info.num_features,
                               info.num_labels), member.where, info.name)
        rows = list(_data_lines(stream, member.where, header[0]))
    for part, n in (("train", info.num_train), ("test", info.num_test)):
        member = located[f"{part}_split"]
        with open_member(member) as stream:
            ids = _read_split(stream, member.where, split, len(rows))
        if len(ids) != n:
            raise DatasetError(f"{member.where}: split {split} lists {len(ids)} points but the "
                               f"registry's {info.name} has {n} {part} points")
        _write_xc(out_dir / f"{part}.txt", (n, header[1], header[2]), (rows[i] for i in ids))


def convert_members(info: DatasetInfo, located: dict[str, Member], out_dir: Path,
                    split: int) -> None:
    """Writes ``out_dir/train.txt`` and ``test.txt`` from a download's located members.

    Args:
      info: the registry entry; every header's N, D, L must match it.
      located: the member of each role of the entry's layout (see `locate_members`).
      out_dir: where the two XC files go, each replaced atomically.
      split: the 1-based split column (data + split-file layouts only).

    Raises:
      DatasetError: a malformed or mismatched header, bad data lines or split files.
      One of `DAMAGED`: a damaged archive or gzip stream.
    """
    if info.layout.uses_splits:
        _convert_splits(info, located, out_dir, split)
    else:
        _convert_train_test(info, located, out_dir)
