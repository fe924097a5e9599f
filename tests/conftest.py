"""Shared fixtures: the real data folder beside the repo (tests skip cleanly without it); the
test session's JAX settings, set here before anything imports JAX, and inherited by the
subprocesses the command-line tests start.

- The CPU backend, unless ``MACH_JAX_TEST_PLATFORMS`` names others: the tests compare results
  bit for bit, which XLA guarantees on CPU only, so the suite passes on a GPU install too.
- One persistent compilation cache for the whole session: the same small programs (the tiny
  preset's steps, compiled by dozens of tests and subprocesses) are compiled once and loaded
  after that. A cached executable is the one the compiler produced: results are unchanged.
- XLA's backend optimisation level 0 and its older (non-MLIR) fusion emitters, unless
  ``XLA_FLAGS`` is set: the tests' programs are small and compiling them is most of their time;
  optimising costs more than it saves there (test_model.py and test_regularisation.py: 120 s ->
  80 s on 2 cores), and the older emitters compile the tiny preset's train step in 0.27 s
  against 0.74 s (test_regularisation.py: 52 s -> 36 s). And one code-generation module per
  program (``--xla_cpu_parallel_codegen_split_count=1``): XLA's CPU compiler otherwise splits a
  program into modules to compile on parallel threads, which only costs where a worker has one
  core, as under ``-n auto`` (below; the in-process tests' CPU time 313 -> 275 s). The flags
  apply in every mode. Every comparison in the suite is between runs compiled alike. The
  real-data tests train with XLA's defaults (test_real_data.py): their steps are large, and
  level 0 runs them at half the speed.
- One core per pytest-xdist worker when there are as many workers as cores (``-n auto``): each
  worker, and every process it starts, runs XLA on one thread. Two workers that each spread their
  programs over both cores spent much of the CPU time switching and waiting (the corel5k preset:
  47 CPU s over 2 cores against 34 s on one, the same metrics); the suite is CPU-bound, so
  that time was the suite's (8 min 37 s -> 7 min 54 s on 2 cores).
"""

from __future__ import annotations

import atexit
import collections
import http.server
import logging
import os
import shutil
import struct
import tempfile
import threading
from pathlib import Path

import pytest

os.environ["JAX_PLATFORMS"] = os.environ.get("MACH_JAX_TEST_PLATFORMS", "cpu")
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
                " --xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("XLA_FLAGS", FAST_COMPILE)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mach_jax_test_jit_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def _one_core_per_worker() -> None:
    """Pins each pytest-xdist worker (and the processes it starts) to a core of its own when
    there are as many workers as cores (see the module docstring)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    cores = sorted(os.sched_getaffinity(0))
    if worker.startswith("gw") and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")) >= len(cores) > 1:
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


_one_core_per_worker()
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def fresh_steps(monkeypatch):
    """An empty table of shared jitted steps (``core.compiled``), as in a new process, for tests
    that count compilations; the process's table is back after the test."""
    from mach_jax.core import compiled

    monkeypatch.setattr(compiled, "_shared", collections.OrderedDict())


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, asserting its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def png_size():
    """The PNG checker shared by the plot tests: ``png_size(path) -> (width, height)``."""
    return _png_size


# The longest tests start first, so that the workers of ``pytest -n`` (pyproject.toml) do not end
# on one of them while the other idles: measured on 2 cores, each of these takes 10 s to 2 min.
_LONGEST_FIRST = ("test_real_data.py", "test_notebook.py", "test_distributed.py", "test_reliability.py",
                  "test_precision_curves.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)


# ---- a loopback HTTP server for the downloader's tests (test_datasets, test_input_reliability) ----

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files by path; honours 'Range: bytes=N-'; paths in server.cut send half."""

    def do_GET(self):
        server = self.server
        path = self.path.split("?")[0]
        server.log.append((self.path, self.headers.get("Range")))
        if path not in server.files:
            self.send_error(404, "Not Found")
            return
        body = server.files[path]
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "text/html" if path.endswith(".html") or path == "/drive"
                         else "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if path in server.cut:
            server.cut.discard(path)
            self.wfile.write(body[start:start + len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.log, httpd.cut = {}, [], set()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def pristine_logger():
    """Every test starts and ends with the ``mach_jax`` logger as Python made it: no handlers,
    no level, propagating. ``cli.run_cli`` attaches a handler to the stderr of its moment and
    stops propagation; left so (by a test or a module-scoped fixture), later tests in the same
    worker would capture no log records and write to a closed stream."""
    logger = logging.getLogger("mach_jax")

    def reset():
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    reset()
    yield
    reset()


@pytest.fixture
def no_proxy(monkeypatch):
    """No proxy for the local server."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
