"""The dataset registry, the downloader against a local HTTP server, and the VW converter."""

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from support import from_rows, run_in_process

from mach_jax import cli, datasets
from mach_jax.data.download import MARKER, download, is_verified
from mach_jax.data.registry import REGISTRY, Download, Layout, get_dataset
from mach_jax.data.vw_format import convert_vw
from mach_jax.data.xc_format import read_xc
from mach_jax.errors import DataFormatError, DatasetError

pytestmark = pytest.mark.usefixtures("no_proxy")  # the local server reached directly (conftest.py)

D, L, N_TRAIN, N_TEST = 20, 7, 18, 12


def make_points(seed: int, n: int):
    """n random points: feature dicts with exact binary fractions, label lists; point 3 has none."""
    rng = np.random.default_rng(seed)
    features = [{int(k): float(rng.choice([0.5, 1.0, 2.25, -1.5]))
                 for k in rng.choice(D, size=rng.integers(1, 6), replace=False)} for _ in range(n)]
    labels = [rng.choice(L, size=rng.integers(1, 4), replace=False).tolist() for _ in range(n)]
    labels[3] = []
    return features, labels


def xc_bytes(features, labels, header=None) -> bytes:
    """XC text as the repository writes it: no leading space on label-less points; one CRLF
    line with trailing spaces."""
    lines = [header or f"{len(features)} {D} {L}"]
    for i, (f, l) in enumerate(zip(features, labels)):
        feats = " ".join(f"{k}:{v!r}" for k, v in f.items())
        lines.append((",".join(map(str, l)) + " " + feats if l else feats)
                     + ("  \r" if i == 5 else ""))
    return ("\n".join(lines) + "\n").encode()


def zip_bytes(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def tar_gz_bytes(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def bibtex_like(server):
    """A zip laid out like the real Bibtex archive (data file + 3-column split files)."""
    features, labels = make_points(0, N_TRAIN + N_TEST)
    rng = np.random.default_rng(1)
    perms = [rng.permutation(N_TRAIN + N_TEST) for _ in range(3)]
    split_text = lambda rows: "".join(" ".join(str(p[r] + 1) for p in perms) + "\n" for r in rows)
    archive = zip_bytes({"Bibtex/Bibtex_data.txt": xc_bytes(features, labels),
                         "Bibtex/Bibtex_trSplit.txt": split_text(range(N_TRAIN)),
                         "Bibtex/Bibtex_tstSplit.txt": split_text(range(N_TRAIN,
                                                                        N_TRAIN + N_TEST))})
    server.files["/Bibtex.zip"] = archive
    return features, labels, perms, archive


@pytest.fixture(scope="module")
def amazon_like(server):
    """A tar.gz with Amazon-670K/train.txt and test.txt."""
    train, test = make_points(2, N_TRAIN), make_points(3, N_TEST)
    archive = tar_gz_bytes({"Amazon-670K/train.txt": xc_bytes(*train),
                            "Amazon-670K/test.txt": xc_bytes(*test)})
    server.files["/amazon.tar.gz"] = archive
    return train, test, archive


def entry(base: str, server, path: str, sha256=None, md5=None, **stats):
    """A test-only copy of a real registry entry: same layout, small statistics, local URL."""
    stats = {"num_features": D, "num_labels": L, "num_train": N_TRAIN, "num_test": N_TEST} | stats
    return dataclasses.replace(REGISTRY[base], **stats,
                               downloads=(Download(server.url + path, sha256, md5=md5),))


def expected(features, labels, ids):
    return from_rows([features[i] for i in ids], [labels[i] for i in ids], D, L)


def read(path):
    return read_xc(path, use_cache=False)


# ---- registry ----

def test_registry_holds_the_standard_datasets_with_published_figures():
    for name in ("Amazon-670K", "Wiki10-31K", "Delicious-200K", "EURLex-4K", "AmazonCat-13K",
                 "Bibtex", "Delicious", "Mediamill"):
        assert get_dataset(name.upper()).name == name
    amazon = get_dataset("amazon-670k")
    assert (amazon.num_features, amazon.num_labels, amazon.num_train, amazon.num_test) == (
        135909, 670091, 490449, 153025)
    assert not amazon.layout.uses_splits and get_dataset("bibtex").layout.uses_splits
    assert all(d.url.startswith("https://") for e in REGISTRY.values() for d in e.downloads)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; known: Mediamill, Bibtex"):
        get_dataset("nope")
    with pytest.raises(ValueError, match="either train and test"):
        Layout(train=("a",), data=("b",)).validate()


def test_a_preset_dataset_the_repository_does_not_publish_says_how_to_use_its_files():
    with pytest.raises(DatasetError) as refused:
        get_dataset("Corel5k")
    message = str(refused.value)
    assert message.startswith("unknown dataset 'Corel5k'; known: Mediamill, Bibtex, Delicious")
    assert "--url FILE" in message and "Amazon-670K" in message
    assert "not published by the Extreme Classification Repository" in message
    assert "--preset corel5k --train FILE --test FILE" in message


@pytest.mark.parametrize("name", ["bibtex", "delicious"])
def test_registry_agrees_with_the_shared_data_headers(shared_data, name):
    info = get_dataset(name)
    for part, n in (("train", info.num_train), ("test", info.num_test)):
        with gzip.open(shared_data / name / f"{part}.txt.gz", "rb") as f:
            header = tuple(map(int, f.readline().split()))
        assert header == (n, info.num_features, info.num_labels)


# ---- downloader ----

@pytest.mark.parametrize("split", [1, 2])
def test_bibtex_like_zip_is_split_by_the_chosen_column(server, bibtex_like, tmp_path, split):
    features, labels, perms, _ = bibtex_like
    out = download(entry("bibtex", server, "/Bibtex.zip"), tmp_path, split=split,
                   progress=False)
    assert out == tmp_path / "Bibtex"
    assert sorted(p.name for p in out.iterdir()) == [".verified.json", "test.txt", "train.txt"]
    perm = perms[split - 1]
    assert read(out / "train.txt") == expected(features, labels, perm[:N_TRAIN])
    assert read(out / "test.txt") == expected(features, labels, perm[N_TRAIN:])
    assert (out / "train.txt").read_bytes().startswith(f"{N_TRAIN} {D} {L}\n".encode())


def test_amazon_like_tar_gz_with_train_and_test_files(server, amazon_like, tmp_path):
    (train_f, train_l), (test_f, test_l), _ = amazon_like
    out = download(entry("amazon-670k", server, "/amazon.tar.gz"), tmp_path,
                   progress=False, keep_archive=True)
    assert read(out / "train.txt") == expected(train_f, train_l, range(N_TRAIN))
    assert read(out / "test.txt") == expected(test_f, test_l, range(N_TEST))
    assert (out / "downloads" / "amazon.tar.gz").exists()  # kept on request
    lines = (out / "train.txt").read_bytes().split(b"\n")
    assert lines[4].startswith(b" ") and lines[6] == lines[6].rstrip()  # canonical lines


def test_a_verified_dataset_is_not_downloaded_again(server, amazon_like, tmp_path):
    info = entry("amazon-670k", server, "/amazon.tar.gz")
    download(info, tmp_path, progress=False)
    before = len(server.log)
    download(info, tmp_path, progress=False)
    assert len(server.log) == before
    (tmp_path / "Amazon-670K" / "test.txt").write_text("tampered")  # no longer verified
    download(info, tmp_path, progress=False)
    assert len(server.log) == before + 1


def test_an_override_registry_and_a_local_file_url(bibtex_like, tmp_path):
    archive = tmp_path / "Bibtex.zip"
    archive.write_bytes(bibtex_like[3])
    mine = {"toy": dataclasses.replace(REGISTRY["bibtex"], name="Toy", num_features=D,
                                       num_labels=L, num_train=N_TRAIN, num_test=N_TEST,
                                       downloads=(Download("https://example.org/toy.zip"),))}
    out = download("TOY", tmp_path / "data", urls=[str(archive)], registry=mine,
                   progress=False)
    assert read(out / "test.txt").num_points == N_TEST and archive.exists()


def test_plain_and_gzipped_files_as_separate_downloads(server, amazon_like, tmp_path):
    (train_f, train_l), (test_f, test_l), _ = amazon_like
    server.files["/plain/train.txt"] = xc_bytes(train_f, train_l)
    server.files["/plain/test.txt.gz"] = gzip.compress(xc_bytes(test_f, test_l))
    info = dataclasses.replace(entry("amazon-670k", server, ""), downloads=(
        Download(server.url + "/plain/train.txt"), Download(server.url + "/plain/test.txt.gz")))
    out = download(info, tmp_path, progress=False)
    assert read(out / "train.txt") == expected(train_f, train_l, range(N_TRAIN))
    assert read(out / "test.txt") == expected(test_f, test_l, range(N_TEST))


def test_header_mismatch_names_the_file_and_the_numbers(server, bibtex_like, tmp_path):
    with pytest.raises(DatasetError) as error:
        download(entry("bibtex", server, "/Bibtex.zip", num_labels=L + 1), tmp_path,
                 progress=False)
    message = str(error.value)
    assert ("Bibtex.zip:Bibtex/Bibtex_data.txt: header does not match the registry's Bibtex"
            in message)
    assert f"labels {L} in the file, {L + 1} in the registry" in message
    with pytest.raises(DatasetError,
                       match="split 1 lists 18 points but the registry's Bibtex has 17"):
        download(entry("bibtex", server, "/Bibtex.zip", num_train=N_TRAIN - 1,
                       num_test=N_TEST + 1), tmp_path, progress=False)


def sources(out_dir):
    """The marker's per-file records, each as (checksum status, algorithm, expected digest)."""
    marker = json.loads((out_dir / MARKER).read_text())
    return [(s["checksum"], s["algorithm"], s["expected"]) for s in marker["sources"]]


def test_the_registry_holds_the_four_published_md5s():
    md5s = {e.name: d.md5 for e in REGISTRY.values() for d in e.downloads if d.md5}
    assert md5s == {"Bibtex": "78db23bd26486d4188502abf6a39b856",
                    "Delicious": "e73730438e67ad179d724503e6770b1a",
                    "EURLex-4K": "ec8feb2a9a0bd0f32d8f4c2b00725524",
                    "Mediamill": "11cfdb9269ae5a301bb0c6f333cc6999"}
    assert not any(d.sha256 for e in REGISTRY.values() for d in e.downloads)


def test_sha256_is_checked_when_known_and_preferred_over_md5(server, amazon_like, tmp_path):
    good = hashlib.sha256(amazon_like[2]).hexdigest()
    out = download(entry("amazon-670k", server, "/amazon.tar.gz", good, md5="0" * 32),
                   tmp_path / "a", progress=False)  # the wrong md5 is not looked at
    assert sources(out) == [("verified", "sha256", good)]
    with pytest.raises(DatasetError, match=f"amazon.tar.gz: sha256 mismatch, expected 0{{64}}, "
                                           f"got {good} "
                                           r"\(from http://127.0.0.1:\d+/amazon.tar.gz\)"):
        download(entry("amazon-670k", server, "/amazon.tar.gz", "0" * 64), tmp_path / "b",
                 progress=False)
    assert (tmp_path / "b" / "Amazon-670K" / "downloads" / "amazon.tar.gz").exists()


def test_md5_is_checked_when_no_sha256_is_known(server, bibtex_like, tmp_path, caplog):
    good = hashlib.md5(bibtex_like[3]).hexdigest()
    out = download(entry("bibtex", server, "/Bibtex.zip", md5=good.upper()), tmp_path / "a",
                   progress=False)
    assert sources(out) == [("verified", "md5", good)]
    with caplog.at_level(logging.INFO, logger="mach_jax"):
        out = download(entry("bibtex", server, "/Bibtex.zip"), tmp_path / "b")
    assert sources(out) == [("unknown", None, None)]
    assert f"{out / 'downloads' / 'Bibtex.zip'}: no sha256 or md5 known, not checked" in caplog.text


def test_a_checksum_mismatch_keeps_the_file_and_names_the_flag(server, bibtex_like, tmp_path,
                                                               caplog):
    good, bad = hashlib.md5(bibtex_like[3]).hexdigest(), "1" * 32
    info = entry("bibtex", server, "/Bibtex.zip", md5=bad)
    kept = tmp_path / "Bibtex" / "downloads" / "Bibtex.zip"
    for _ in range(2):  # the kept file is checked again, not fetched again
        with pytest.raises(DatasetError) as error:
            download(info, tmp_path, progress=False)
        assert str(error.value) == (
            f"{kept}: md5 mismatch, expected {bad}, got {good} (from {server.url}/Bibtex.zip); "
            f"remove {kept} to fetch it again, or pass --accept-checksum-mismatch to use it "
            "anyway")
        assert kept.read_bytes() == bibtex_like[3]
    before = len(server.log)
    out = download(info, tmp_path, progress=False, accept_checksum_mismatch=True)
    assert len(server.log) == before and read(out / "test.txt").num_points == N_TEST
    warning = (f"warning: {kept}: md5 mismatch, expected {bad}, got {good}; using it anyway "
               "(--accept-checksum-mismatch)")
    assert caplog.messages == [warning]
    assert sources(out) == [("mismatch accepted", "md5", bad)]
    assert json.loads((out / MARKER).read_text())["sources"][0]["md5"] == good


def test_the_cli_accepts_a_checksum_mismatch_with_the_flag(server, bibtex_like, tmp_path,
                                                           monkeypatch):
    monkeypatch.setitem(REGISTRY, "bibtex", entry("bibtex", server, "/Bibtex.zip", md5="2" * 32))
    command = ["download", "bibtex", "--dir", str(tmp_path), "--accept-checksum-mismatch"]
    accepted = run_in_process("mach_jax.datasets", *command, cwd=tmp_path)
    kept, good = tmp_path / "Bibtex" / "downloads" / "Bibtex.zip", hashlib.md5(bibtex_like[3])
    assert (f"warning: {kept}: md5 mismatch, expected {'2' * 32}, got {good.hexdigest()}; "
            "using it anyway") in accepted.stderr
    assert sources(tmp_path / "Bibtex") == [("mismatch accepted", "md5", "2" * 32)]
    again = run_in_process("mach_jax.datasets", *command[:-1], cwd=tmp_path)  # done: nothing fetched
    assert ("Bibtex: already downloaded and verified in "
            f"{tmp_path / 'Bibtex'} (with a checksum mismatch accepted)") in again.stderr


def test_the_marker_records_the_propensity_and_older_markers_stay_valid(server, amazon_like,
                                                                        tmp_path):
    info = entry("amazon-670k", server, "/amazon.tar.gz")
    out = download(info, tmp_path, progress=False)
    marker = json.loads((out / MARKER).read_text())
    assert marker["propensity"] == {"a": 0.6, "b": 2.6}
    assert "propensity" not in json.dumps(marker["dataset"])
    del marker["propensity"]
    marker["sources"] = [{"url": s["url"], "sha256": s["sha256"]} for s in marker["sources"]]
    (out / MARKER).write_text(json.dumps(marker))  # as written before checksums were recorded
    assert is_verified(out, info)


def test_http_404_and_unreachable_hosts_are_clear_errors(server, tmp_path):
    with pytest.raises(DatasetError, match=r"http://127.0.0.1:\d+/missing.zip: HTTP error 404"):
        download(entry("bibtex", server, "/missing.zip"), tmp_path, progress=False)
    info = dataclasses.replace(entry("bibtex", server, ""),
                               downloads=(Download("http://127.0.0.1:9/x.zip"),))
    with pytest.raises(DatasetError, match="127.0.0.1:9/x.zip: cannot connect"):
        download(info, tmp_path, progress=False)


@pytest.mark.parametrize("root_exists", [False, True])
def test_an_offline_download_names_url_and_leaves_no_folder_behind(tmp_path, root_exists):
    root = tmp_path / "data"
    root.mkdir() if root_exists else None
    info = dataclasses.replace(REGISTRY["bibtex"], downloads=(Download("http://127.0.0.1:9/x.zip"),))
    with pytest.raises(DatasetError, match=r"127.0.0.1:9/x.zip: cannot connect \(.*\); without a "
                                           r"network, .* pass it with --url FILE$"):
        download(info, root, progress=False)
    assert list(tmp_path.iterdir()) == ([root] if root_exists else [])  # no data/Bibtex/downloads
    assert not root_exists or list(root.iterdir()) == []


def test_an_interrupted_download_resumes_with_a_range_request(server, amazon_like, tmp_path):
    server.files["/cut.tar.gz"] = amazon_like[2]
    server.cut.add("/cut.tar.gz")
    info = entry("amazon-670k", server, "/cut.tar.gz")
    with pytest.raises(DatasetError, match=r"download stopped after \d+ bytes .* again to resume"):
        download(info, tmp_path, progress=False)
    part = tmp_path / "Amazon-670K" / "downloads" / "cut.tar.gz.part"
    assert part.stat().st_size == len(amazon_like[2]) // 2
    out = download(info, tmp_path, progress=False)
    assert server.log[-1] == ("/cut.tar.gz", f"bytes={len(amazon_like[2]) // 2}-")
    assert read(out / "test.txt") == expected(*amazon_like[1], range(N_TEST))


def test_a_google_drive_confirmation_page_is_followed(server, amazon_like, tmp_path):
    server.files["/drive"] = (b'<html><form id="download-form" action="/usercontent/download">'
                              b'<input type="hidden" name="id" value="abc">'
                              b'<input type="hidden" name="confirm" value="t"></form></html>')
    server.files["/usercontent/download"] = amazon_like[2]
    out = download(entry("amazon-670k", server, "/drive?id=abc"), tmp_path,
                   progress=False)
    assert server.log[-1][0] == "/usercontent/download?id=abc&confirm=t"
    assert read(out / "train.txt").num_points == N_TRAIN
    server.files["/quota.html"] = b"<html><body>Quota exceeded</body></html>"
    with pytest.raises(DatasetError, match="sent an HTML page, not the data"):
        download(entry("amazon-670k", server, "/quota.html"), tmp_path / "q",
                 progress=False)


def test_damaged_archives_and_missing_members(server, bibtex_like, tmp_path):
    server.files["/broken.zip"] = bibtex_like[3][: len(bibtex_like[3]) // 2]
    with pytest.raises(DatasetError, match="damaged or truncated download .* run again"):
        download(entry("bibtex", server, "/broken.zip"), tmp_path, progress=False)
    assert not (tmp_path / "Bibtex" / "downloads" / "broken.zip").exists()
    plain_tar = io.BytesIO()
    with tarfile.open(fileobj=plain_tar, mode="w") as t:
        data = xc_bytes(*make_points(4, 30)) * 40
        info = tarfile.TarInfo("train.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    server.files["/cut.tar"] = plain_tar.getvalue()[:3000]
    with pytest.raises(DatasetError, match="damaged or truncated download"):
        download(entry("amazon-670k", server, "/cut.tar"), tmp_path, progress=False)
    server.files["/other.zip"] = zip_bytes({"x/readme.txt": b"hello"})
    with pytest.raises(DatasetError, match="no file named Bibtex_data.txt in the download "
                                           r"\(it holds: x/readme.txt\)"):
        download(entry("bibtex", server, "/other.zip"), tmp_path / "o", progress=False)


def test_bad_split_files_name_file_and_line(server, bibtex_like, tmp_path):
    features, labels, _, _ = bibtex_like
    server.files["/badsplit.zip"] = zip_bytes({
        "Bibtex_data.txt": xc_bytes(features, labels),
        "bibtex_trSplit.txt": b"1\n2\n99\n", "bibtex_tstSplit.txt": b"3\n"})
    with pytest.raises(DatasetError, match=r"badsplit.zip:bibtex_trSplit.txt:3: '99' is not a row "
                                           r"number in 1\.\.30"):
        download(entry("bibtex", server, "/badsplit.zip"), tmp_path, progress=False)


# ---- command line ----

def run(*args, cwd):
    env = dict(os.environ, no_proxy="127.0.0.1,localhost")
    return subprocess.run([sys.executable, "-m", "mach_jax.datasets", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_list_and_a_failed_download_exit_status(server, tmp_path):
    listing = run("list", cwd=tmp_path)
    assert listing.returncode == 0 and "Amazon-670K" in listing.stdout
    assert "135,909" in listing.stdout
    failed = run("download", "bibtex", "--dir", "d", "--url", server.url + "/nothing.zip",
                 cwd=tmp_path)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines() == [
        f"Bibtex: fetching {server.url}/nothing.zip",
        f"error: {server.url}/nothing.zip: HTTP error 404 (Not Found)"]


def test_cli_download_refuses_data_not_matching_the_real_registry(server, bibtex_like, tmp_path):
    # The real Bibtex entry's md5 applies to a --url in its place: the synthetic archive fails it.
    command = ["download", "Bibtex", "--dir", str(tmp_path), "--quiet",
               "--url", server.url + "/Bibtex.zip"]
    refused = run_in_process("mach_jax.datasets", *command, cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    assert (f"md5 mismatch, expected 78db23bd26486d4188502abf6a39b856, got "
            f"{hashlib.md5(bibtex_like[3]).hexdigest()}") in refused.stderr
    assert "--accept-checksum-mismatch" in refused.stderr
    # Accepted, it still expects 7395 points of 1836 features: the headers refuse it.
    accepted = run_in_process("mach_jax.datasets", *command, "--accept-checksum-mismatch", cwd=tmp_path,
                              check=False)
    assert accepted.returncode == 2
    assert "warning: " in accepted.stderr and "using it anyway" in accepted.stderr  # even with --quiet
    assert "points 30 in the file, 7395 in the registry" in accepted.stderr
    assert "features 20 in the file, 1836 in the registry" in accepted.stderr


# ---- VW conversion ----

VW = (b"1 | 0:0.5 3:2\n"
      b"3 'doc7 |words 2:1.5 |more 5\r\n"
      b"\n"
      b"2 |\n")


def test_convert_vw_writes_xc_with_0_based_labels(tmp_path):
    (tmp_path / "in.vw").write_bytes(VW)
    shape = convert_vw(tmp_path / "in.vw", tmp_path / "out.txt")
    assert shape == (3, 6, 3)
    assert (tmp_path / "out.txt").read_text() == "3 6 3\n0 0:0.5 3:2\n2 2:1.5 5:1\n1\n"
    convert_vw(tmp_path / "in.vw", tmp_path / "out.txt.gz", num_features=10,
               num_labels=5)
    data = read(tmp_path / "out.txt.gz")
    assert (data.num_points, data.num_features, data.num_labels) == (3, 10, 5)
    assert data.labels.indices.tolist() == [0, 2, 1]
    (tmp_path / "zero.vw").write_bytes(b"0 | 1:1\n")
    assert convert_vw(tmp_path / "zero.vw", tmp_path / "z.txt", label_base=0) == (1, 2, 1)


@pytest.mark.parametrize("line, problem", [
    (b"1 0:1", "no '|' between the class id and the features"),
    (b"1 2.0 | 0:1", "expected one class id before '|'"),
    (b"x | 0:1", "class id 'x' is not a non-negative integer"),
    (b"0 | 0:1", "class id 0 is below 1 (VW multiclass ids are 1-based"),
    (b"9 | 0:1", "class id 9 is outside [1, 5)"),
    (b"1 | word:1", "feature 'word:1' is not an integer index"),
    (b"1 | 0:abc", "feature value 'abc' is not a finite number"),
    (b"1 | 0:1e99", "feature value '1e99' is not a finite number"),
    (b"1 |ns:2 0:1", "namespace weights ('ns:2') are not supported"),
    (b"1 | 0:1 |b 0:2", "duplicate feature id 0"),
    (b"1 | 12:1", "feature id 12 is outside [0, 10)"),
])
def test_convert_vw_names_file_and_line_of_malformed_input(tmp_path, line, problem):
    path = tmp_path / "bad.vw"
    path.write_bytes(b"1 | 0:1\n\n" + line + b"\n")
    with pytest.raises(DataFormatError) as error:
        convert_vw(path, tmp_path / "out.txt", num_features=10, num_labels=4)
    assert (error.value.path, error.value.line) == (str(path), 3)
    assert str(error.value).startswith(f"{path}:3: {problem}")
    assert not (tmp_path / "out.txt").exists()


def test_cli_convert_vw_exit_status(tmp_path, capsys):
    (tmp_path / "in.vw").write_bytes(VW)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: datasets.main(["convert-vw", str(tmp_path / "in.vw"),
                                           str(tmp_path / "o.txt")]), process_ends=False)
    assert exit_info.value.code == 0 and "3 points, D=6, L=3" in capsys.readouterr().out
    (tmp_path / "bad.vw").write_bytes(b"1 | a b\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: datasets.main(["convert-vw", str(tmp_path / "bad.vw"),
                                           str(tmp_path / "o.txt")]), process_ends=False)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'bad.vw'}:1: feature 'a'")
