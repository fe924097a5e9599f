"""``notebooks/from_text.ipynb`` runs end to end on CPU: texts -> TfidfVectorizer -> MachClassifier
in a Pipeline -> GridSearchCV over B -> tag names; its stored outputs are a fresh run's, and it
leaves no temporary folder behind. Executed as test_notebook executes the quickstart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("sklearn")

from test_notebook import _texts, execute  # noqa: E402 (the quickstart's machinery)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "from_text.ipynb"
# The lines a fresh run must print exactly as stored (CPU results are bit-exact at the suite's flags).
RESULT_LINES = re.compile(r"^(?:B = +\d+: validation P@1 .*|best: .*|test P@1 .*|.*  true: .*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after a full run: ``(notebook, text of all outputs)``."""
    tmp = tmp_path_factory.mktemp("notebook_from_text")
    notebook = execute(NOTEBOOK, tmp)
    # The estimators' run folders (mach_jax_*) and the notebook's own export (tmp*): gone once the
    # kernel has exited.
    assert not [*(tmp / "tmpdir").glob("mach_jax_*"), *(tmp / "tmpdir").glob("tmp*")]
    return notebook, "\n".join(_texts(notebook))


def test_stored_with_outputs_that_a_fresh_run_prints(executed):
    stored_notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(stored_notebook)
    code = [cell for cell in stored_notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    stored = RESULT_LINES.findall("\n".join(_texts(stored_notebook)))
    assert len(stored) >= 7  # two grid points, the best, four texts, the test metrics
    assert stored == RESULT_LINES.findall(executed[1])


def test_grid_search_and_tag_names(executed):
    notebook, text = executed
    assert not [output for cell in notebook.cells for output in cell.get("outputs", [])
                if output.output_type == "error"]
    assert re.search(r"^best: \{'mach__num_buckets': (8|16)\}$", text, re.MULTILINE)
    p_at_1 = float(re.search(r"^test P@1 (\d+\.\d)", text, re.MULTILINE)[1])
    assert p_at_1 > 50  # 30 tags: far above chance
    # The top tags by name: every predicted name is a tag name of the generator.
    from mach_jax.data.tagged_text import make_tagged_texts

    names = set(make_tagged_texts(1, num_tags=30)[2])
    predicted = re.findall(r"predicted: (.*)$", text, re.MULTILINE)
    assert len(predicted) == 4
    for line in predicted:
        assert {part.rsplit(" (", 1)[0] for part in line.split(", ")} <= names
    assert "served model:" in text
