"""Input that must never be silently wrong, stuck or lost: the parse cache keyed by content, and
the downloader's size limits and one-line errors (issue: checkpoint integrity, workdir safety,
resource limits; cases 4, 7 and 12).

The downloader runs in-process through its real error path (``support.run_in_process``) against
a loopback HTTP server, with tiny archives and small limits.
"""

import dataclasses
import gzip
import io
import os
import tarfile
import threading
import tracemalloc

import numpy as np
import pytest
from support import run_in_process

from mach_jax.data import archives, files
from mach_jax.data import xc_format as xc
from mach_jax.data.archives import Limits
from mach_jax.data.registry import REGISTRY, Download
from mach_jax.errors import DataFormatError

pytestmark = pytest.mark.usefixtures("no_proxy")  # the local server reached directly (conftest.py)

D, L, N_TRAIN, N_TEST = 5, 4, 3, 2
POINTS = b"0,1 0:1 3:0.5\n2 1:2\n 4:1\n"


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A tar.gz of regular files and then symbolic links (name -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buf.getvalue()


def good_members(train: bytes = b"3 5 4\n" + POINTS) -> dict[str, bytes]:
    return {"Amazon-670K/train.txt": train, "Amazon-670K/test.txt": b"2 5 4\n1 2:1\n3 0:1\n"}


def serve_as_amazon(server, monkeypatch, path: str, archive: bytes) -> None:
    """Serves archive at path and makes the registry's Amazon-670K that tiny dataset there."""
    server.files[path] = archive
    entry = dataclasses.replace(REGISTRY["amazon-670k"], num_features=D, num_labels=L,
                                num_train=N_TRAIN, num_test=N_TEST,
                                downloads=(Download(server.url + path),))
    monkeypatch.setitem(REGISTRY, "amazon-670k", entry)


def download(tmp_path, *flags):
    return run_in_process("mach_jax.datasets", "download", "amazon-670k", "--dir", "d", "--quiet",
                          *flags, cwd=tmp_path, check=False)


def one_error_line(result) -> str:
    """The single ``error: ...`` line a refused command printed (status 2, no traceback)."""
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


# ---- case 4: the parse cache is keyed by content ----

def test_case4_a_file_edited_in_place_with_size_and_mtime_kept_is_parsed_again(tmp_path):
    src, cache = tmp_path / "d.txt", tmp_path / "cache"
    src.write_bytes(b"1 3 2\n0 0:1\n")
    stamp = src.stat().st_mtime_ns
    assert xc.read_xc(src, cache_dir=cache).features.indices.tolist() == [0]
    src.write_bytes(b"1 3 2\n1 2:1\n")  # the same size...
    os.utime(src, ns=(stamp, stamp))  # ...and modification time, as some editors and rsync leave
    edited = xc.read_xc(src, cache_dir=cache)
    assert edited.features.indices.tolist() == [2] and edited.labels.indices.tolist() == [1]
    assert len(list(cache.glob("*.npz"))) == 1  # the stale entry was replaced


def test_case4_an_unreadable_file_is_an_error_even_with_a_cache_entry(tmp_path, monkeypatch):
    src, cache = tmp_path / "d.txt", tmp_path / "cache"
    src.write_bytes(b"1 3 2\n0 0:1\n")
    xc.read_xc(src, cache_dir=cache)
    src.chmod(0)
    if os.access(src, os.R_OK):  # root reads anyway: fail the open as it fails for a user
        def denied(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        monkeypatch.setattr(files, "open", denied, raising=False)  # read_xc opens through files
    try:
        with pytest.raises(DataFormatError, match=r"d\.txt: cannot read file \(Permission denied\)"):
            xc.read_xc(src, cache_dir=cache)
    finally:
        src.chmod(0o644)


def test_case4_a_pipe_is_read_once_and_not_cached(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)

    def write():
        with open(pipe, "wb") as f:
            f.write(b"1 3 2\n0 0:1\n")

    writer = threading.Thread(target=write)
    writer.start()
    assert xc.read_xc(pipe, cache_dir=tmp_path / "cache").features.indices.tolist() == [0]
    writer.join()
    assert not (tmp_path / "cache").exists()


# ---- case 12: the downloader's limits, checked while streaming ----

def test_case12_a_member_without_newlines_is_refused_after_the_line_limit_not_read_whole(
        tmp_path, server, monkeypatch):
    # 16 MiB of one line (a few kB compressed); the limit is 64 KiB.
    serve_as_amazon(server, monkeypatch, "/noline.tar.gz", tar_gz(
        good_members(train=b"7" * (16 << 20))))
    tracemalloc.start()
    try:
        refused = download(tmp_path, "--max-line-bytes", "64K")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    where = "d/Amazon-670K/downloads/noline.tar.gz"  # as --dir named it
    assert one_error_line(refused) == (
        f"error: {where}:Amazon-670K/train.txt:1: line longer than 65,536 bytes (64 KiB): not a "
        "text file of one record per line; if it is one, pass a larger --max-line-bytes")
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB held: the member was read whole"
    assert not list((tmp_path / "d" / "Amazon-670K").glob("*.txt"))


def test_case12_a_long_data_line_and_a_large_member_name_their_place(tmp_path, server,
                                                                    monkeypatch):
    long_line = b"3 5 4\n0 0:1\n1 " + b"1:1 " * 30_000 + b"\n 4:1\n"
    serve_as_amazon(server, monkeypatch, "/long.tar.gz", tar_gz(good_members(train=long_line)))
    message = one_error_line(download(tmp_path, "--max-line-bytes", "64K"))
    assert message.endswith("long.tar.gz:Amazon-670K/train.txt:3: line longer than 65,536 bytes "
                            "(64 KiB): not a text file of one record per line; if it is one, "
                            "pass a larger --max-line-bytes")
    big = b"3 5 4\n" + POINTS.replace(b"\n", b" " * 300 + b"\n")  # 930 bytes of trailing spaces
    serve_as_amazon(server, monkeypatch, "/big.tar.gz", tar_gz(good_members(train=big)))
    (tmp_path / "b").mkdir()
    message = one_error_line(download(tmp_path / "b", "--max-member-bytes", "512"))
    assert message.endswith("big.tar.gz:Amazon-670K/train.txt: longer than 512 bytes, refused "
                            "while reading it; if it is that large, pass a larger "
                            "--max-member-bytes")
    # The defaults are generous; within them the same archive converts.
    assert Limits() == (64 << 20, 64 << 30)
    (tmp_path / "c").mkdir()
    assert download(tmp_path / "c").returncode == 0
    assert (tmp_path / "c" / "d" / "Amazon-670K" / "train.txt").read_bytes() == b"3 5 4\n" + POINTS


def test_case12_size_flags_take_units_and_refuse_nonsense(tmp_path):
    result = run_in_process("mach_jax.datasets", "download", "bibtex", "--max-line-bytes", "1.5G",
                            cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "expected a size in bytes such as 65536 or 64M, got '1.5G'" in result.stderr


# ---- case 7: the downloader's expected failures are one line ----

def test_case7_a_mistyped_local_url_or_a_folder_is_one_error_line(tmp_path):
    missing = run_in_process("mach_jax.datasets", "download", "bibtex", "--dir", "d",
                             "--url", "dowloads/Bibtex.zip", cwd=tmp_path, check=False)
    assert one_error_line(missing) == (
        "error: dowloads/Bibtex.zip: no such file; --url takes a downloaded file or a URL with "
        "its scheme (https://...)")
    (tmp_path / "folder").mkdir()
    folder = run_in_process("mach_jax.datasets", "download", "bibtex", "--url", "folder/..",
                            cwd=tmp_path, check=False)
    assert one_error_line(folder).startswith("error: folder/..: is a folder, not a file; ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # nothing written


def test_case7_a_dir_naming_a_file_is_one_error_line(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    result = run_in_process("mach_jax.datasets", "download", "bibtex", "--dir", "data",
                            cwd=tmp_path, check=False)
    assert one_error_line(result) == (
        "error: data: is a file, cannot create the folder data/Bibtex; pass another --dir")
    assert (tmp_path / "data").read_text() == "not a folder"


def test_case7_a_dotdot_download_name_stays_inside_the_downloads_folder(tmp_path, server,
                                                                       monkeypatch):
    serve_as_amazon(server, monkeypatch, "/mirror/..", tar_gz(good_members()))
    result = download(tmp_path, "--keep-archive")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "d" / "Amazon-670K"
    assert sorted(p.name for p in (out / "downloads").iterdir()) == ["Amazon-670K-0.download"]
    assert sorted(p.name for p in out.iterdir()) == [".verified.json", "downloads", "test.txt",
                                                     "train.txt"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["Amazon-670K"]


def test_case7_a_tar_with_a_duplicate_name_link_is_one_error_line(tmp_path, server, monkeypatch):
    serve_as_amazon(server, monkeypatch, "/dup.tar.gz", tar_gz(
        good_members(), links={"Amazon-670K/train.txt": "elsewhere/train.txt"}))
    where = "d/Amazon-670K/downloads/dup.tar.gz"
    assert one_error_line(download(tmp_path)) == (
        f"error: {where}: the tar holds a file and a link or folder both named "
        "Amazon-670K/train.txt; unpack it by hand and pass the data files with --url")


def test_case7_a_conversion_killed_midway_leaves_no_file_that_looks_complete(tmp_path, server,
                                                                            monkeypatch):
    serve_as_amazon(server, monkeypatch, "/ok.tar.gz", tar_gz(good_members()))
    real = archives._data_lines

    def killed_after_one_line(*args):
        lines = real(*args)
        yield next(lines)
        raise KeyboardInterrupt  # as SIGINT arrives while train.txt is being written

    monkeypatch.setattr(archives, "_data_lines", killed_after_one_line)
    assert download(tmp_path).returncode == 130
    out = tmp_path / "d" / "Amazon-670K"
    assert sorted(p.name for p in out.iterdir()) == ["downloads"]  # no train.txt, marker, temp
    monkeypatch.setattr(archives, "_data_lines", real)
    assert download(tmp_path).returncode == 0
    assert (out / "train.txt").read_bytes() == b"3 5 4\n" + POINTS
    assert np.array_equal(xc.read_xc(out / "test.txt", use_cache=False).labels.indices, [1, 3])


def test_case12_split_layouts_spool_rows_to_disk_and_write_them_in_split_order(tmp_path, server,
                                                                              monkeypatch):
    data = b"5 5 4\n0 0:1\n1 1:1\n2 2:1\n3 3:1\n 4:1\n"
    archive = tar_gz({"Bibtex_data.txt": gzip.compress(data), "bibtex_trSplit.txt": b"5\n2\n1\n",
                      "bibtex_tstSplit.txt": b"4\n3\n"})
    server.files["/bib.tar.gz"] = archive
    entry = dataclasses.replace(REGISTRY["bibtex"], num_features=D, num_labels=L, num_train=3,
                                num_test=2, downloads=(Download(server.url + "/bib.tar.gz"),))
    monkeypatch.setitem(REGISTRY, "bibtex", entry)
    result = run_in_process("mach_jax.datasets", "download", "bibtex", "--dir", "d", "--quiet",
                            cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "d" / "Bibtex"
    assert (out / "train.txt").read_bytes() == b"3 5 4\n 4:1\n1 1:1\n0 0:1\n"
    assert (out / "test.txt").read_bytes() == b"2 5 4\n3 3:1\n2 2:1\n"
