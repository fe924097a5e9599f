"""Regenerates the README's quickstart output block from a run of ``python -m mach_jax.train``.

    nice python scripts/readme_output.py --run --write      # run the quickstart, rewrite README.md's block
    python scripts/readme_output.py WORKDIR --log ERR.txt   # the block of a finished run, to stdout

``--run`` trains the quickstart (no arguments) in a temporary workdir, which it removes after:
about 70 s on 2 CPU cores. It runs with ``XLA_FLAGS`` unset, as on a fresh machine: other XLA
flags (the test suite's, say) change the last digits. From a run made by hand, pass its workdir and its captured stderr
(``python -m mach_jax.train --workdir W 2> ERR.txt``). The status lines (``mach_jax:``,
``data:``, ``model:``, ...) are the run's stderr without its progress bars; the metric lines are
the workdir's ``metrics.json`` through mach_jax's own ``format_metrics``, as the command prints
them; the workdir is shown as the command's default, ``runs/default``. ``--write`` replaces the
fenced block under README.md's ``<!-- quickstart-output`` line. ``tests/test_readme.py`` checks
that the README's block has the shape the code prints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mach_jax.readout.metrics import format_metrics

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- quickstart-output"
SHOWN_WORKDIR = "runs/default"
# A tqdm bar as it lands in a captured stderr: "\rtrain:  60%|######    | 282/470 [00:38<00:23, ...]"
_BAR = re.compile(r"\r?[^\r\n:]*:\s*\d+%\|[^|\r\n]*\|[^\]\r\n]*\]")


def status_lines(stderr: str, workdir: str) -> list[str]:
    """The run's stderr lines without progress bars or the final ``written to`` line, the
    workdir shown as `SHOWN_WORKDIR`."""
    text = _BAR.sub("", stderr).replace("\r", "\n").replace(str(workdir), SHOWN_WORKDIR)
    return [line for line in text.splitlines() if line.strip() and not line.startswith("written to ")]


def block(stderr: str, workdir: str | Path) -> list[str]:
    """The README's output block of a finished run: its status lines, its metrics as the command
    prints them, and where they were written."""
    metrics = json.loads((Path(workdir) / "metrics.json").read_text())
    return [*status_lines(stderr, str(workdir)), *format_metrics(metrics).splitlines(),
            f"written to {SHOWN_WORKDIR}/metrics.json"]


def readme_block(text: str) -> list[str]:
    """The lines of the fenced block under the README's `MARKER` line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER)) + 1
    if not lines[start].startswith("```"):
        raise ValueError(f"README.md: no fenced block right under the {MARKER} line")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    return lines[start + 1:end]


def replace_block(text: str, new: list[str]) -> str:
    """`text` with the block under `MARKER` replaced by `new`."""
    old = "\n".join(readme_block(text))
    at = text.index(MARKER)
    return text[:at] + text[at:].replace(old, "\n".join(new), 1)


def run_quickstart() -> list[str]:
    """Trains the quickstart in a temporary workdir (removed after) and returns its block."""
    with tempfile.TemporaryDirectory(prefix="mach_jax_quickstart_") as tmp:
        workdir = Path(tmp) / "run"
        env = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}
        done = subprocess.run([sys.executable, "-m", "mach_jax.train", "--workdir", str(workdir)],
                              capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise SystemExit(f"the quickstart failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return block(done.stderr, workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", nargs="?", help="a finished quickstart run (with --log)")
    parser.add_argument("--log", help="the run's captured stderr")
    parser.add_argument("--run", action="store_true", help="run the quickstart now (about 70 s on 2 cores)")
    parser.add_argument("--write", action="store_true", help="rewrite README.md's block instead of printing it")
    args = parser.parse_args(argv)
    if args.run == bool(args.workdir) or (args.workdir and not args.log):
        parser.error("give either --run, or WORKDIR and --log")
    lines = run_quickstart() if args.run else block(Path(args.log).read_text(), args.workdir)
    if args.write:
        README.write_text(replace_block(README.read_text(), lines))
        print(f"rewrote the quickstart block of {README}")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
