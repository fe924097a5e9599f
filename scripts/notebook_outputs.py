"""Runs ``notebooks/quickstart.ipynb`` and stores it with its outputs, as ``tests/test_notebook.py`` runs it.

    python scripts/notebook_outputs.py          # about 25 s on 2 CPU cores; needs pip install ".[test]"

The notebook is executed by nbclient in a kernel of this interpreter, on the CPU, with the test
suite's XLA flags (``tests/conftest.py``'s ``FAST_COMPILE``): CPU results are bit-exact for the
same flags, so the test can compare the stored metric lines with a fresh run's. Its temporary
folders (kernel spec, parse cache) are removed after.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat
from ipykernel.kernelspec import write_kernel_spec

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
sys.path.insert(0, str(ROOT / "tests"))
from conftest import FAST_COMPILE  # noqa: E402  (the suite's flags, in one place)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mach_jax_notebook_") as tmp:
        write_kernel_spec(Path(tmp) / "jupyter" / "kernels" / "mach_jax_outputs")
        os.environ.update(JUPYTER_PATH=str(Path(tmp) / "jupyter"), JAX_PLATFORMS="cpu",
                          XLA_FLAGS=FAST_COMPILE, MACH_JAX_CACHE_DIR=str(Path(tmp) / "cache"))
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="mach_jax_outputs", record_timing=False,
                                resources={"metadata": {"path": tmp}}).execute()  # no timestamps stored
    nbformat.write(notebook, NOTEBOOK)
    print(f"stored {NOTEBOOK} with its outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
