"""``python -m mach_jax.datasets``: list and download standard XC datasets; convert VW files.

    python -m mach_jax.datasets list
    python -m mach_jax.datasets download Bibtex --dir data     # -> data/Bibtex/{train,test}.txt
    python -m mach_jax.datasets convert-vw odp_train.vw odp/train.txt

``download`` fetches the registry's files (see `mach_jax.data.registry`), streamed into a ``.part``
file that a re-run resumes; unpacks zip, tar(.gz), .gz or plain files; writes ``train.txt`` and
``test.txt`` in XC format (for data + split-file layouts, the points named by split column
``--split``, 1-based row numbers); and checks every header's N, D, L against the registry and
each file's sha256 where the registry has one. A dataset verified before (``.verified.json``
beside the files) is not fetched again. Lines are copied as they are, except that trailing
spaces and CRs are dropped and a point without labels gets its leading space; ids are checked
later by the strict reader (`read_xc`), as for any XC file.

``convert-vw`` turns a Vowpal Wabbit multiclass file (as used by the MACH paper for ODP and
ImageNet) into an XC file; see `mach_jax.data.vw_format`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import html.parser
import http.client
import json
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from mach_jax import cli
from mach_jax.data.registry import REGISTRY, DatasetInfo, Download, get_dataset
from mach_jax.errors import DatasetError
from mach_jax.data.vw_format import convert_vw  # noqa: F401 (re-exported)

MARKER = ".verified.json"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile)
logger = logging.getLogger("mach_jax")


class _FormFinder(html.parser.HTMLParser):
    """Each form's action and hidden inputs (Google Drive's "download anyway" page is one)."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append((attrs.get("action") or "", {}))
        elif tag == "input" and self.forms and attrs.get("type") == "hidden" and attrs.get("name"):
            self.forms[-1][1][attrs["name"]] = attrs.get("value") or ""


def _confirm_url(page: bytes, base: str) -> str | None:
    """The URL behind a "file too large to scan: download anyway" form, or None."""
    finder = _FormFinder()
    finder.feed(page.decode("utf-8", "replace"))
    for action, fields in finder.forms:
        if "confirm" in fields:
            return urllib.parse.urljoin(base, action) + "?" + urllib.parse.urlencode(fields)
    return None


def _open_url(url: str, start: int):
    """The response for url from byte `start` on; None if the server refuses that range."""
    headers = {"User-Agent": "mach_jax"} | ({"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            return None
        raise DatasetError(f"{url}: HTTP error {e.code} ({e.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DatasetError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None


def fetch(url: str, dest: Path, *, progress: bool = True, _hops: int = 0) -> Path:
    """Downloads url to dest, streamed through ``dest.part``, which a later call resumes.

    Raises:
      DatasetError: HTTP or network failure, an HTML page instead of data, a cut-off transfer.
    """
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    response = _open_url(url, start)
    if response is None:  # 416: the partial file cannot be continued
        part.unlink()
        start, response = 0, _open_url(url, 0)
    with response:
        if response.headers.get_content_type() == "text/html":
            target = _confirm_url(response.read(1 << 20), response.geturl())
            if target is None or _hops:
                raise DatasetError(f"{url}: the server sent an HTML page, not the data (a quota or "
                                   "sign-in page?); fetch the file in a browser and pass its path "
                                   "with --url")
            return fetch(target, dest, progress=progress, _hops=1)
        if response.status != 206:
            start = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length", "")
        total = start + int(length) if length.isdigit() else None
        done, problem = start, None
        with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress, leave=False) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
                    done += len(chunk)
            except (OSError, http.client.HTTPException) as e:
                problem = f"{type(e).__name__}: {e}"
    if problem is None and total is not None and done < total:
        problem = f"{total - done} bytes missing"
    if problem is not None:
        raise DatasetError(f"{url}: download stopped after {done} bytes ({problem}); "
                           "run the same command again to resume")
    os.replace(part, dest)
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _list_members(path: Path, single_name: str) -> tuple[str, list[str]]:
    """("zip" | "tar", member files) for an archive, or ("file", [single_name]) for data."""
    with open(path, "rb") as f:
        head = f.read(64)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return "zip", [i.filename for i in z.infolist() if not i.is_dir()]
    if head.startswith(b"PK\x03\x04"):
        raise zipfile.BadZipFile("no central directory")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise DatasetError(f"{path}: is an HTML page, not a dataset; fetch the file in a browser "
                           "and pass its path with --url")
    try:
        with tarfile.open(path, "r:*") as t:
            return "tar", [m.name for m in t.getmembers() if m.isfile()]
    except tarfile.ReadError:
        with _open_member(path, "file", single_name) as stream:
            if stream.read(512)[257:262] == b"ustar":  # a tar after all, cut short
                raise
        return "file", [single_name]  # one (possibly gzipped) data file


@contextlib.contextmanager
def _open_member(path: Path, kind: str, member: str):
    """A binary stream over one file of an archive (or the file itself), gunzipped if gzip."""
    with contextlib.ExitStack() as stack:
        if kind == "zip":
            stream = stack.enter_context(stack.enter_context(zipfile.ZipFile(path)).open(member))
        elif kind == "tar":
            stream = stack.enter_context(tarfile.open(path, "r:*")).extractfile(member)
        else:
            stream = stack.enter_context(open(path, "rb"))
        if stream.peek(2)[:2] == b"\x1f\x8b":
            stream = stack.enter_context(gzip.GzipFile(fileobj=stream))
        yield stream


def _base(name: str) -> str:
    name = PurePosixPath(name).name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _locate(files: list[tuple[Path, str, list[str]]], info: DatasetInfo) -> dict:
    """{role: (path, kind, member)} for each role of the layout, by member base name."""
    found = {}
    for role, names in info.layout.roles().items():
        wanted = [_base(n) for n in names]
        hits = sorted(((wanted.index(_base(m)), str(p), k, m) for p, k, ms in files for m in ms
                       if _base(m) in wanted))
        if not hits:
            members = [m for _, _, ms in files for m in ms]
            shown = ", ".join(members[:8]) + (", ..." if len(members) > 8 else "")
            raise DatasetError(f"{info.name}: no file named {' or '.join(names)} in the download "
                               f"(it holds: {shown or 'nothing'})")
        best = [h for h in hits if h[0] == hits[0][0]]
        if len(best) > 1:
            raise DatasetError(f"{info.name}: {len(best)} files named {names[best[0][0]]} in the "
                               f"download: {', '.join(h[3] for h in best)}")
        found[role] = (Path(best[0][1]), best[0][2], best[0][3])
    return found


def _where(path: Path, kind: str, member: str) -> str:
    return str(path) if kind == "file" else f"{path}:{member}"


def _read_header(line: bytes, where: str) -> tuple[int, int, int]:
    parts = line.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise DatasetError(f"{where}:1: header must be 'num_points num_features num_labels', "
                           f"got {line[:60].decode('latin-1')!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _check_header(header, expected, where: str, name: str) -> None:
    wrong = [f"{field} {got} in the file, {want} in the registry"
             for field, got, want in zip(("points", "features", "labels"), header, expected)
             if got != want]
    if wrong:
        raise DatasetError(f"{where}: header does not match the registry's {name}: "
                           + "; ".join(wrong))


def _data_lines(stream, where: str, num_points: int):
    """The num_points lines after the header, newline-terminated; refuses more or fewer."""
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


def _read_split(stream, where: str, column: int, num_rows: int) -> list[int]:
    """0-based row ids from 1-based split column `column` of a split file."""
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


def _write_xc(path: Path, header, lines) -> None:
    """Writes the header and lines, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"%d %d %d\n" % tuple(header))
        f.writelines(lines)
    os.replace(tmp, path)


def _convert(info: DatasetInfo, located: dict, out_dir: Path, split: int) -> None:
    """Writes out_dir/{train,test}.txt from the located files, checking them on the way."""
    expected = {"train": info.num_train, "test": info.num_test}
    if not info.layout.uses_splits:
        for part, n in expected.items():
            path, kind, member = located[part]
            where = _where(path, kind, member)
            with _open_member(path, kind, member) as stream:
                header = _read_header(stream.readline(), where)
                _check_header(header, (n, info.num_features, info.num_labels), where, info.name)
                _write_xc(out_dir / f"{part}.txt", header, _data_lines(stream, where, header[0]))
        return
    path, kind, member = located["data"]
    where = _where(path, kind, member)
    with _open_member(path, kind, member) as stream:
        header = _read_header(stream.readline(), where)
        _check_header(header, (sum(expected.values()), info.num_features, info.num_labels),
                      where, info.name)
        rows = list(_data_lines(stream, where, header[0]))
    for part, n in expected.items():
        path, kind, member = located[f"{part}_split"]
        where = _where(path, kind, member)
        with _open_member(path, kind, member) as stream:
            ids = _read_split(stream, where, split, len(rows))
        if len(ids) != n:
            raise DatasetError(f"{where}: split {split} lists {len(ids)} points but the "
                               f"registry's {info.name} has {n} {part} points")
        _write_xc(out_dir / f"{part}.txt", (n, header[1], header[2]), (rows[i] for i in ids))


def _summary(info: DatasetInfo, split: int) -> dict:
    return {"name": info.name, "num_features": info.num_features, "num_labels": info.num_labels,
            "num_train": info.num_train, "num_test": info.num_test,
            "split": split if info.layout.uses_splits else None}


def is_verified(out_dir: Path, info: DatasetInfo, split: int = 1) -> bool:
    """Whether out_dir holds this dataset (and split), written and verified by `download`."""
    try:
        marker = json.loads((out_dir / MARKER).read_text())
        sizes = {name: (out_dir / name).stat().st_size for name in ("train.txt", "test.txt")}
    except (OSError, ValueError):
        return False
    return marker.get("dataset") == _summary(info, split) and marker.get("bytes") == sizes


def _local_name(info: DatasetInfo, item: Download, index: int) -> str:
    name = PurePosixPath(urllib.parse.urlparse(item.url).path).name
    return name if "." in name else f"{info.name}-{index}.download"


def _as_url(text: str) -> str:
    return Path(text).resolve().as_uri() if "://" not in text and os.path.exists(text) else text


def download(dataset: str | DatasetInfo, root: str | os.PathLike, *, urls=None, split: int = 1,
             progress: bool = True, keep_archive: bool = False, registry=None) -> Path:
    """Fetches, unpacks and verifies a dataset into ``root/NAME/{train,test}.txt``.

    Args:
      dataset: a registry name (any case) or an entry.
      root: parent folder; the dataset goes to root/NAME.
      urls: fetch these instead of the entry's URLs (a mirror, or local files); the entry's
        checksums still apply when there are as many URLs as the entry has downloads.
      split: 1-based split column for data + split-file layouts.
      progress: show a progress bar and log what happens (logger "mach_jax", INFO).
      keep_archive: keep the downloaded files after a successful conversion.
      registry: entries to look `dataset` up in; default `REGISTRY`.

    Returns:
      The dataset folder.

    Raises:
      DatasetError: network, archive, layout, header or checksum problems (one-line message).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset, registry)
    if split < 1:
        raise DatasetError(f"split must be 1 or more, got {split}")
    split = split if info.layout.uses_splits else 1
    items = info.downloads
    if urls:
        urls = [_as_url(u) for u in urls]
        items = (tuple(dataclasses.replace(d, url=u) for d, u in zip(items, urls))
                 if len(urls) == len(items) else tuple(Download(u) for u in urls))
    say = logger.info if progress else (lambda message: None)
    out_dir = Path(root) / info.name
    if is_verified(out_dir, info, split):
        say(f"{info.name}: already downloaded and verified in {out_dir}")
        return out_dir
    fetched = out_dir / "downloads"  # apart from the outputs, which may share their names
    fetched.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)  # half-replaced outputs must not look verified
    files = []
    for index, item in enumerate(items):
        dest = fetched / _local_name(info, item, index)
        if not dest.exists():
            say(f"{info.name}: fetching {item.url}")
            fetch(item.url, dest, progress=progress)
        digest = _sha256(dest)
        if item.sha256 and digest != item.sha256.lower():
            dest.unlink()
            raise DatasetError(f"{dest}: sha256 {digest} does not match the registry's "
                               f"{item.sha256} (file from {item.url} removed)")
        single = item.filename or PurePosixPath(urllib.parse.urlparse(item.url).path).name
        files.append((dest, item, digest, single))
    try:
        listed = [(dest, *_list_members(dest, single)) for dest, _, _, single in files]
        _convert(info, _locate(listed, info), out_dir, split)
    except _DAMAGED as e:
        for dest, *_ in files:
            dest.unlink(missing_ok=True)
        raise DatasetError(f"{info.name}: damaged or truncated download ({e}); removed "
                           f"{', '.join(str(f[0]) for f in files)}, run again to fetch it afresh"
                           ) from None
    except NotImplementedError as e:  # e.g. a zip compression method Python lacks
        raise DatasetError(f"{info.name}: cannot unpack {files[0][0]} ({e}); unpack it by hand "
                           "and pass the data files with --url") from None
    sizes = {name: (out_dir / name).stat().st_size for name in ("train.txt", "test.txt")}
    sources = [{"url": item.url, "sha256": digest} for _, item, digest, _ in files]
    (out_dir / MARKER).write_text(json.dumps(
        {"dataset": _summary(info, split), "bytes": sizes, "sources": sources}, indent=1))
    if not keep_archive:
        shutil.rmtree(fetched)
    say(f"{info.name}: wrote {out_dir / 'train.txt'} ({info.num_train} points) and "
        f"test.txt ({info.num_test} points), D={info.num_features}, L={info.num_labels}")
    return out_dir


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mach_jax.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the registry's datasets and their statistics")
    get = commands.add_parser("download", help="fetch, unpack and verify one dataset")
    get.add_argument("name", help="dataset name from `list` (any case)")
    get.add_argument("--dir", default="data", help="it goes to DIR/NAME/ (default: %(default)s)")
    get.add_argument("--url", action="append", help="fetch from here instead: a mirror or an "
                     "already downloaded local file (repeat for several files)")
    get.add_argument("--split", type=int, default=1,
                     help="split column for data + split-file layouts (default: %(default)s)")
    get.add_argument("--keep-archive", action="store_true", help="keep the downloaded files")
    get.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    vw = commands.add_parser("convert-vw", help="Vowpal Wabbit multiclass file -> XC file")
    vw.add_argument("input", help="VW file (plain or gzip)")
    vw.add_argument("output", help="XC file to write (.gz: compressed)")
    vw.add_argument("--num-features", type=_non_negative, help="D (default: largest id + 1)")
    vw.add_argument("--num-labels", type=_non_negative, help="L (default: largest label + 1)")
    vw.add_argument("--label-base", type=int, choices=(0, 1), default=1,
                    help="1: VW's 1-based class ids (default); 0: already 0-based")
    return parser.parse_args(argv)


def do_list(args: argparse.Namespace) -> int:
    print(f"{'name':<16}{'D':>11}{'L':>11}{'train':>11}{'test':>10}{'lbl/pt':>8}{'pt/lbl':>9}"
          "  layout")
    for e in REGISTRY.values():
        stats = [f"{x:.2f}" if x is not None else "-" for x in (e.labels_per_point,
                                                                 e.points_per_label)]
        layout = "data + split files" if e.layout.uses_splits else "train + test files"
        print(f"{e.name:<16}{e.num_features:>11,}{e.num_labels:>11,}{e.num_train:>11,}"
              f"{e.num_test:>10,}{stats[0]:>8}{stats[1]:>9}  {layout}")
    print("\nfetch one with: python -m mach_jax.datasets download NAME --dir DIR")
    return 0


def do_download(args: argparse.Namespace) -> int:
    out_dir = download(args.name, args.dir, urls=args.url, split=args.split,
                       progress=not args.quiet, keep_archive=args.keep_archive)
    if not args.quiet:
        print(f"{out_dir / 'train.txt'}\n{out_dir / 'test.txt'}")
    return 0


def do_convert_vw(args: argparse.Namespace) -> int:
    n, d, l = convert_vw(args.input, args.output, num_features=args.num_features,
                         num_labels=args.num_labels, label_base=args.label_base)
    print(f"wrote {args.output}: {n} points, D={d}, L={l}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    command = {"list": do_list, "download": do_download, "convert-vw": do_convert_vw}
    return command[args.command](args)


if __name__ == "__main__":
    cli.run_cli(main)
