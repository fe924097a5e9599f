"""``notebooks/quickstart.ipynb`` runs end to end on CPU and shows what it promises.

The notebook is executed with nbclient in a kernel of this interpreter (a kernelspec written to
a temporary ``JUPYTER_PATH``, so a ``python3`` kernelspec of another environment cannot be
picked up), with ``JAX_PLATFORMS=cpu`` and a temporary parse cache. The notebook is stored with its
outputs, which must be what it prints now: ``python scripts/notebook_outputs.py`` runs it as this
test does and stores them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL_NAME = "mach_jax_test"
CELL_TIMEOUT_S = 600


def test_notebook_is_stored_with_its_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # run top to bottom
    assert all(cell.outputs for cell in code)
    assert not any(output.output_type == "error" for cell in code for output in cell.outputs)


def execute(path: Path, tmp: Path):
    """The notebook at ``path`` after a full run in ``tmp``, its kernel's temporary folders in
    ``tmp/tmpdir`` (for the caller to check that none is left)."""
    from ipykernel.kernelspec import write_kernel_spec  # in the test extra, beside nbclient

    (tmp / "tmpdir").mkdir()
    write_kernel_spec(tmp / "jupyter" / "kernels" / KERNEL_NAME)  # argv: sys.executable -m ipykernel_launcher
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_PATH", str(tmp / "jupyter"))
        env.setenv("JAX_PLATFORMS", "cpu")
        # XLA_FLAGS as the rest of the suite (conftest.FAST_COMPILE): the notebook compiles about
        # 30 programs (8 read-outs for its plot alone), which then run on small shapes. One core:
        # 22 s against 54 s at XLA's defaults, whose faster training does not make up for it.
        env.setenv("MACH_JAX_CACHE_DIR", str(tmp / "cache"))
        env.setenv("TMPDIR", str(tmp / "tmpdir"))  # the kernel's temporary folders, checked after
        notebook = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                                         resources={"metadata": {"path": str(tmp)}})
        client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    return notebook


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after a full run: ``(notebook, text of all outputs)``."""
    tmp = tmp_path_factory.mktemp("notebook")
    notebook = execute(NOTEBOOK, tmp)
    assert not list((tmp / "tmpdir").glob("mach_jax_quickstart_*"))  # the notebook removed its folder
    return notebook, "\n".join(_texts(notebook))


def _texts(notebook) -> list[str]:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                texts.append(output.text)
            elif "text/plain" in output.get("data", {}):
                texts.append(output.data["text/plain"])
    return texts


def test_notebook_runs_without_errors(executed):
    notebook, text = executed
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.output_type == "error"]
    assert not errors
    assert "Traceback" not in text
    assert "runtime: local, accelerator:" in text  # the install cell ran and installed nothing


def test_notebook_stored_outputs_are_what_it_prints(executed):
    # the stored metric lines equal a fresh run's (the same XLA flags: CPU results are bit-exact)
    metric_lines = re.compile(r"^(?:r=\d+: )?(?:P|nDCG|PSP)@1 .*$", re.MULTILINE)
    stored = "\n".join(_texts(nbformat.read(NOTEBOOK, as_version=4)))
    assert len(metric_lines.findall(stored)) >= 10  # not vacuous: the runs' metrics and the plot's rows
    assert metric_lines.findall(stored) == metric_lines.findall(executed[1])


def test_notebook_prints_the_metrics_and_predictions(executed):
    _, text = executed
    # format_metrics' line, after training, after restoring, and after each re-run
    lines = re.findall(r"^P@1 +(\d+\.\d\d)  P@3 +(\d+\.\d\d)  P@5 +(\d+\.\d\d)$", text, re.MULTILINE)
    assert len(lines) >= 4
    assert float(lines[0][0]) > 50  # trained, not chance (L = 2,000)
    assert "same P@1/3/5 as after training: True" in text
    assert "top-5 id:score" in text and "approx top-5" in text
    assert "approx (top_buckets=2" in text


def test_notebook_plots_precision_vs_repetitions(executed):
    notebook, text = executed
    images = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert len(images) == 1
    assert re.search(r"^r=8: P@1", text, re.MULTILINE)


def test_notebook_resumes_and_restores(executed):
    _, text = executed
    assert "in-memory and restored predictions on 1000 test points identical: True" in text
    # the finished run: a second session at its last step; the interrupted one: at epoch 1's end
    sessions = [[int(step) for step in found.split(",")]
                for found in re.findall(r"training sessions started at steps \[([\d, ]+)\]", text)]
    assert len(sessions) == 2
    assert sessions[0][0] == 0 and sessions[0][1] == 3 * sessions[1][1] > 0
    assert "resuming from the checkpoint at step" in text
    assert "same P@1/3/5 as the uninterrupted run: True" in text  # CPU: XLA is deterministic
