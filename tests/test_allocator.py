"""A command's process keeps freed memory for reuse (``host_memory.reuse_freed_memory``): XLA's
per-step temporaries are no longer mapped and page-faulted in afresh. Checked by what it is for:
a large block allocated and freed again and again faults its pages in once, not every time."""

import os
import subprocess
import sys

import pytest

from mach_jax import cli
from mach_jax.storage import host_memory

# Allocates and frees a 64 MiB block 20 times, touching it each time; prints the minor page faults.
REPEATED_BLOCKS = """
import resource, sys
from mach_jax.storage import host_memory
host_memory.reuse_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = bytearray(64 << 20)  # zero-filled: every page touched
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(setting: str) -> int:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env[host_memory.SETTING] = setting
    result = subprocess.run([sys.executable, "-c", REPEATED_BLOCKS], env=env, capture_output=True, text=True,
                            check=True)
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_are_reused_rather_than_faulted_in_again():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    reused, system = minor_faults("reuse"), minor_faults("system")
    if system < 10 * pages:  # this C library reuses such blocks on its own: nothing to compare
        pytest.skip(f"the C library's own allocator reused the blocks ({system} faults)")
    assert reused < 3 * pages < 10 * pages <= system


def test_only_a_command_process_changes_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "reuse_freed_memory", lambda: calls.append(1) or True)
    for process_ends in (False, True):
        with pytest.raises(SystemExit):
            cli.run_cli(lambda: 0, process_ends=process_ends)
    assert calls == [1]
    monkeypatch.undo()
    monkeypatch.setenv(host_memory.SETTING, "system")
    assert host_memory.reuse_freed_memory() is False
