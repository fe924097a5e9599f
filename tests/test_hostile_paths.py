"""Hostile paths and endless streams: outputs never replace a device, FIFO, socket or
link; lock and log files are never followed through a link; numbers are length-checked before
``int()``; inputs are read once (FIFO, pipe, stdin) and bounded; stale or renamed state is
refused or set aside; every refusal is one ``error:`` line with status 2.

Commands run in-process (``support.run_in_process``) on one tiny run trained once; the memory
bound runs in a subprocess, where ``ru_maxrss`` measures it. Device nodes are made only inside
tmp_path, where ``mknod`` is permitted (the test skips otherwise).
"""

import errno
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from mach_jax import cli
from mach_jax.config import get_preset
from mach_jax.data import archives, files
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.vw_format import convert_vw
from mach_jax.data.xc_format import read_xc, write_xc
from mach_jax.errors import DataFormatError, UnsafePathError, WorkdirError
from mach_jax.storage import lock, rerank_store
from support import one_error_line, run_in_process

LONG = "1" * 5000  # past Python's 4,300-digit int() limit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (checkpoints 10 and 20) in ``work`` and its test file ``test.txt``."""
    root = tmp_path_factory.mktemp("hostile")
    run_in_process("mach_jax.train", "--preset", "tiny", "--workdir", "work", "--quiet", cwd=root)
    write_xc(root / "test.txt", make_synthetic(get_preset("tiny").data.synthetic)[1])
    return root


def run(root, module, *args):
    return run_in_process(f"mach_jax.{module}", *args, cwd=root, check=False)


def predict(root, *args):
    return run(root, "predict", "--workdir", "work", "--quiet", *args)


def char_device(path):
    """A copy of /dev/null's (1, 3) or /dev/zero's (1, 5) node inside tmp_path, or a skip."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5 if path.name.startswith("zero") else 3))
    except (PermissionError, OSError) as error:
        pytest.skip(f"mknod not permitted here ({error})")
    return path


def feed(path, data: bytes):
    """A thread writing ``data`` into the FIFO ``path`` (started; join it)."""
    def write():
        with open(path, "wb") as f:
            f.write(data)
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def test_outputs_are_never_written_through_a_device_fifo_socket_or_link(trained, tmp_path):
    shutil.copytree(trained / "work", tmp_path / "work")
    shutil.copy(trained / "test.txt", tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "link.txt").symlink_to(victim)
    os.mkfifo(tmp_path / "fifo")
    for name, kind in [("link.txt", "symbolic link"), ("fifo", "FIFO (named pipe)")]:
        line = one_error_line(predict(tmp_path, "--input", "test.txt", "--output", name))
        assert f"--output {name}: is a {kind}, not a regular file; refused" in line
    assert (tmp_path / "link.txt").is_symlink() and victim.read_text() == "keep me\n"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    with socket.socket(socket.AF_UNIX) as server:  # a socket, through the one atomic writer
        server.bind(str(tmp_path / "sock"))
        with pytest.raises(UnsafePathError, match="sock: is a socket"):
            files.write_bytes_atomically(tmp_path / "sock", b"x")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    null = char_device(tmp_path / "null")
    assert "is a character device" in one_error_line(predict(tmp_path, "--input", "test.txt", "--output", "null"))
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_a_linked_lock_or_log_file_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("train.lock", "metrics.jsonl"):
        work = tmp_path / name.replace(".", "_")
        work.mkdir()
        (work / name).symlink_to(victim)
        line = one_error_line(run(tmp_path, "train", "--preset", "tiny", "--workdir", work.name, "--quiet"))
        assert f"{name}: is a symbolic link" in line, line
        assert victim.read_text() == "precious\n" and not (work / "config.json").exists()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    line = one_error_line(run(tmp_path, "train", "--preset", "tiny", "--workdir", "dangling", "--quiet"))
    assert "dangling: is a symbolic link to" in line and "which does not exist" in line


def test_numbers_past_the_int_limit_are_one_line_naming_file_and_line(trained, tmp_path):
    shutil.copytree(trained / "work", tmp_path / "work")
    (tmp_path / "label.txt").write_text(f"1 400 300\n{LONG} 1:1\n")
    (tmp_path / "feature.txt").write_text(f"1 400 300\n0 {LONG}:1\n")
    (tmp_path / "header.txt").write_text(f"1 {LONG} 300\n0 1:1\n")
    line = one_error_line(run(tmp_path, "train", "--preset", "tiny", "--workdir", "new", "--train", "label.txt"))
    assert "label.txt:2: label id '11111111111111111111...' (5,000 digits) is outside [0, 300)" in line
    assert "feature.txt:2: feature id" in one_error_line(predict(tmp_path, "--input", "feature.txt"))
    line = one_error_line(run(tmp_path, "evaluate", "--workdir", "work", "--test", "header.txt"))
    assert "header.txt:1: num_features '11111111111111111111...' has 5,000 digits" in line
    member = archives.Member(tmp_path / "bibtex.zip", "zip", "train.txt")  # a download's header check
    with pytest.raises(DataFormatError, match=r"train.txt:1: num_points .* has 5,000 digits"):
        archives._read_header(iter([(1, LONG.encode() + b" 3 2\n")]), member)
    (tmp_path / "vw.txt").write_text(f"1 | 3:1\n{LONG} | 1:1\n")
    with pytest.raises(DataFormatError, match=r"vw.txt:2: class id .* has 5,000 digits"):
        convert_vw(tmp_path / "vw.txt", tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists() and not list(tmp_path.glob(".out.txt.*"))


def test_predict_reads_a_fifo_a_gzip_pipe_and_stdin_once(trained, tmp_path, monkeypatch):
    shutil.copytree(trained / "work", tmp_path / "work")
    text = (trained / "test.txt").read_bytes()
    (tmp_path / "test.txt").write_bytes(text)
    expected = predict(tmp_path, "--input", "test.txt").stdout
    assert expected.count("\n") == 200
    import gzip
    for name, data in [("fifo", text), ("gz_fifo", gzip.compress(text))]:
        os.mkfifo(tmp_path / name)
        writer = feed(tmp_path / name, data)
        assert predict(tmp_path, "--input", name).stdout == expected
        writer.join(5)
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, text), os.close(write_end)), daemon=True)
    writer.start()
    with os.fdopen(read_end, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert predict(tmp_path, "--input", "-").stdout == expected


def test_lines_past_the_cap_or_the_header_end_the_read_at_once(trained, tmp_path):
    shutil.copytree(trained / "work", tmp_path / "work")
    (tmp_path / "long.txt").write_bytes(b"1 400 300\n0 " + b"1:1 " * 300_000 + b"\n")
    line = one_error_line(predict(tmp_path, "--input", "long.txt", "--max-line-bytes", "1M"))
    assert "long.txt:2: line longer than 1,048,576 bytes" in line
    os.mkfifo(tmp_path / "endless")  # header N = 2, then lines without end: refused at line 4
    writer = threading.Thread(target=_write_until_closed, args=(tmp_path / "endless", b"2 400 300\n",
                                                                 b"0 1:1\n" * 1000), daemon=True)
    writer.start()
    line = one_error_line(run(tmp_path, "evaluate", "--workdir", "work", "--test", "endless"))
    assert "endless:4: data line after the 2 points declared in the header" in line
    writer.join(5)


def _write_until_closed(path, head: bytes, block: bytes):
    """Writes ``head`` then ``block`` forever, until the reader closes the FIFO (the close's own
    flush may be the write that finds it closed)."""
    try:
        with open(path, "wb") as f:
            f.write(head)
            while True:
                f.write(block)
    except BrokenPipeError:
        pass


# The process's own peak: VmHWM of its memory map. (Linux keeps ru_maxrss across exec, so a child
# of a large test worker would report the worker's peak.)
MEMORY_SCRIPT = """
import resource, sys
from mach_jax import cli
from mach_jax.predict import main
def peak_kib():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    cli.run_cli(lambda: main(sys.argv[1:]))
finally:
    print("maxrss_kib", peak_kib(), file=sys.stderr)
"""


def test_predict_on_an_endless_device_stays_under_1_gb(trained, tmp_path):
    zero = tmp_path / "zero"
    try:
        char_device(zero)
    except pytest.skip.Exception:
        os.mkfifo(zero)  # no mknod here: a FIFO of endless zeros stands in for /dev/zero
        threading.Thread(target=_write_until_closed, args=(zero, b"", bytes(1 << 20)), daemon=True).start()
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "--workdir", str(trained / "work"),
                             "--input", str(zero), "--quiet"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-2].startswith("error: ") and "zero:1: line longer than 67,108,864 bytes" in lines[-2]
    assert int(lines[-1].split()[1]) * 1024 < 1 << 30, lines[-1]


def test_a_renamed_step_folder_and_a_file_where_checkpoints_go_are_refused(trained, tmp_path):
    shutil.copytree(trained / "work", tmp_path / "work")
    steps = tmp_path / "work" / "checkpoints"
    (steps / "20").rename(steps / "30")
    for module, args in [("train", ["--preset", "tiny", "--epochs", "4"]), ("evaluate", [])]:
        line = one_error_line(run(tmp_path, module, "--workdir", "work", "--quiet", *args))
        assert "checkpoints/30: its record says it is the checkpoint of step 20, not 30" in line, line
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "checkpoints").write_text("not a folder\n")
    line = one_error_line(run(tmp_path, "train", "--preset", "tiny", "--workdir", "fresh", "--quiet"))
    assert "fresh/checkpoints: is a file, not a folder" in line
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["checkpoints"]


def test_rerank_and_export_are_refused_while_a_training_run_holds_their_folder(trained, tmp_path):
    shutil.copytree(trained / "work", tmp_path / "work")
    with lock.hold(tmp_path / "work"):
        line = one_error_line(run(tmp_path, "rerank", "--workdir", "work", "--rerank-shortlist", "10"))
    assert "work is in use by another training run (pid" in line
    assert not (tmp_path / "work" / "rerank").exists()
    with lock.hold(tmp_path / "served"):  # an export's target: not while a run holds it
        line = one_error_line(predict(tmp_path, "--export-params", "served"))
    assert "served is in use by another training run" in line and not list((tmp_path / "served").iterdir())


def test_a_reranker_fitted_to_older_members_is_set_aside_with_a_warning(trained, tmp_path, caplog):
    shutil.copytree(trained / "work", tmp_path / "work")
    record = {"members_step": 10, "finished": True, "num_features": 400, "num_labels": 300}
    rerank_store.write_record(tmp_path / "work", record)
    with caplog.at_level("WARNING", logger="mach_jax"):
        assert rerank_store.read_record(tmp_path / "work") is None
    assert "fitted to the members of step 10, they are at step 20 now: reading out without it" in caplog.text
    assert rerank_store.read_record(tmp_path / "work", current_only=False) == record
    rerank_store.write_record(tmp_path / "work", {**record, "members_step": 20})
    assert rerank_store.read_record(tmp_path / "work")["members_step"] == 20


def test_a_cache_entry_with_nan_values_is_parsed_again(tmp_path):
    source, cache = tmp_path / "d.txt", tmp_path / "cache"
    source.write_text("2 3 2\n0 0:1 2:0.5\n1 1:2\n")
    read_xc(source, cache_dir=cache)
    [entry] = cache.glob("*.npz")
    with np.load(entry) as z:
        arrays = dict(z)
    arrays["feature_values"] = np.full_like(arrays["feature_values"], np.nan)
    with open(entry, "wb") as f:
        np.savez(f, **arrays)
    assert read_xc(source, cache_dir=cache).features.values.tolist() == [1.0, 0.5, 2.0]


def test_small_ones_name_what_is_wrong(trained, tmp_path, monkeypatch):
    shutil.copytree(trained / "work", tmp_path / "work")
    np.save(tmp_path / "work" / "label_counts.npy", -np.ones(300, np.int64))
    line = one_error_line(run(tmp_path, "evaluate", "--workdir", "work", "--quiet"))
    assert "label_counts.npy: holds a negative count (-1 at index 0)" in line
    config = json.loads((trained / "work" / "config.json").read_text())["config"]
    config["model"]["hidden_sizes"] = [0]
    (tmp_path / "bad.json").write_text(json.dumps(config))
    line = one_error_line(run(tmp_path, "train", "--config", "bad.json", "--workdir", "new", "--quiet"))
    assert line.startswith("error: bad.json: model.hidden_sizes:") and "--hidden" not in line


class FullStdout(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_behind_stdout_names_stdout(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", FullStdout())
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(lambda: print("result") or 0, process_ends=False)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: stdout: No space left on device"


def test_a_lock_is_never_opened_through_a_link_or_fifo(tmp_path):
    os.mkfifo(tmp_path / "train.lock")
    with pytest.raises(WorkdirError, match=r"train.lock: is a FIFO \(named pipe\), not a regular file"):
        with lock.hold(tmp_path):
            pass


def test_a_failed_save_in_flight_names_its_own_step(tmp_path, monkeypatch):
    """The save of step 10 fails while in flight (a full disk): the error names step 10, not the
    step whose save found it."""
    from mach_jax.storage import checkpoints

    real_wait, failed = checkpoints.ocp.CheckpointManager.wait_until_finished, []

    def full_disk_after_step_10(self):  # once, as an async save's error is reported once
        real_wait(self)
        if self.latest_step() == 10 and not failed:
            failed.append(True)
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "wait_until_finished", full_disk_after_step_10)
    line = one_error_line(run(tmp_path, "train", "--preset", "tiny", "--workdir", "full", "--quiet"))
    assert "No space left on device while saving checkpoints (the checkpoint of step 10)" in line, line


def test_the_layout_check_knows_every_path_a_run_writes():
    from mach_jax.storage import checkpoints, workdir
    from mach_jax.training import metric_log

    assert {checkpoints.CHECKPOINT_DIR, checkpoints.DAMAGED_DIR, metric_log.TENSORBOARD_DIR,
            rerank_store.RERANK_DIR} == set(workdir.RUN_FOLDERS)
    assert {metric_log.METRICS_LOG, lock.LOCK_FILE, workdir.METRICS_FILE} < set(workdir.RUN_FILES)


def test_a_shortlist_as_long_as_l_is_refused_before_anything_trains(trained, tmp_path):
    line = one_error_line(run(tmp_path, "train", "--preset", "tiny", "--quiet", "--workdir", "new",
                              "--rerank-shortlist", "500"))  # tiny: L = 300
    assert line.startswith("error: --shortlist-size: ") and "shorter than the model's L=300 classes" in line
    assert not (tmp_path / "new").exists()
    shutil.copytree(trained / "work", tmp_path / "work")
    line = one_error_line(run(tmp_path, "rerank", "--workdir", "work", "--quiet", "--rerank-shortlist", "300"))
    assert "shorter than the model's L=300 classes" in line and not (tmp_path / "work" / "rerank").exists()


def test_train_and_evaluate_take_the_line_cap_as_a_flag(trained, tmp_path):
    shutil.copy(trained / "test.txt", tmp_path / "test.txt")  # header "200 400 300", longer data lines
    line = one_error_line(run(tmp_path, "train", "--preset", "tiny", "--quiet", "--workdir", "w", "--train",
                              "test.txt", "--test", "test.txt", "--max-line-bytes", "16"))
    assert "test.txt:2: line longer than 16 bytes" in line and not (tmp_path / "w").exists()
    shutil.copytree(trained / "work", tmp_path / "work")
    line = one_error_line(run(tmp_path, "evaluate", "--workdir", "work", "--quiet", "--test", "test.txt",
                              "--max-line-bytes", "16"))
    assert "test.txt:2: line longer than 16 bytes" in line
    assert run(tmp_path, "evaluate", "--workdir", "work", "--quiet", "--test", "test.txt",
               "--max-line-bytes", "1K").returncode == 0
