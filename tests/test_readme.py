"""README.md as a user meets it: its sample output has the shape the code prints, every command
in it runs as written (the expensive ones: their flags parse), and README and docs/ speak to users.

The quickstart itself takes about 70 s, too long for the suite: its output block is checked
against a ``tiny`` run of the same command, line by line with the numbers masked, and its metric
lines against ``format_metrics``. ``MACH_JAX_README_FULL=1`` also runs the quickstart and compares
every line but the free memory (``scripts/readme_output.py --run --write`` rewrites the block).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex

import pytest
from conftest import REPO_ROOT
from support import run_in_process

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
_spec = importlib.util.spec_from_file_location("readme_output", REPO_ROOT / "scripts" / "readme_output.py")
readme_output = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_output)


def masked(line: str) -> str:
    """A line's shape: numbers as '#', the workdir as W."""
    return re.sub(r"\d+(\.\d+)?", "#", re.sub(r"workdir=\S+", "workdir=W", line))


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's folder after the README's first steps, made small: ``runs/Bibtex`` trained with
    the ``tiny`` preset (its output kept: the quickstart's lines, at another size) and
    ``data/Bibtex/{train,test}.txt`` holding that run's data."""
    from mach_jax import get_preset, write_xc
    from mach_jax.data import sources

    root = tmp_path_factory.mktemp("user")
    trained = run_in_process("mach_jax.train", "--preset", "tiny", "--workdir", "runs/Bibtex", cwd=root)
    (root / "data" / "Bibtex").mkdir(parents=True)
    train, test = sources.load_datasets(get_preset("tiny").data)
    write_xc(root / "data" / "Bibtex" / "train.txt", train)
    write_xc(root / "data" / "Bibtex" / "test.txt", test)
    return root, trained


# ---- the sample output ----

def test_the_quickstart_output_has_the_lines_the_code_prints(user_dir):
    root, trained = user_dir
    readme = readme_output.readme_block(README.read_text())
    tiny = readme_output.block(trained.stderr, root / "runs" / "Bibtex")
    assert tiny[-4:-1] == trained.stdout.splitlines()[-3:]  # the script formats as the command prints
    assert len(readme) == len(tiny), "\n".join(readme + ["-- the code prints --"] + tiny)
    for ours, printed in zip(readme, tiny):
        if printed.startswith("model: "):  # the tiny model's sizes and rules are its own
            assert masked(ours).split(" = ")[0] == masked(printed).split(" = ")[0]
            assert re.search(r"parameters, state .+; peak memory about .+ free \(host RAM\); .+, forms=\w+$", ours)
        else:
            assert masked(ours) == masked(printed)


def test_the_quickstart_metric_lines_are_format_metrics_of_their_numbers():
    from mach_jax.readout.metrics import format_metrics

    block = readme_output.readme_block(README.read_text())
    start = next(i for i, line in enumerate(block) if line.startswith("test metrics on "))
    heading = re.fullmatch(r"test metrics on (\d+) points \((.+)\), (\d+) repetitions, (\w+) aggregation, "
                           r"(\w+) decoder:", block[start])
    metrics = {"num_points": int(heading[1]), "test_source": heading[2], "num_repetitions": int(heading[3]),
               "aggregation": heading[4], "decoder": heading[5]}
    for line in block[start + 1:start + 4]:
        metrics |= {name: float(value) / 100 for name, value in re.findall(r"(\S+@\d) +(\d+\.\d\d)", line)}
    assert format_metrics(metrics).splitlines() == block[start:start + 4]


@pytest.mark.skipif(not os.environ.get("MACH_JAX_README_FULL"), reason="about 70 s: MACH_JAX_README_FULL=1")
def test_the_quickstart_prints_the_readme_block_exactly():
    free = re.compile(r"of [\d.]+ \w+ free")
    readme = readme_output.readme_block(README.read_text())
    assert [free.sub("", line) for line in readme_output.run_quickstart()] == [free.sub("", line) for line in readme]


# ---- the commands ----

def readme_commands() -> list[str]:
    """The README's shell commands: ```bash blocks, comments dropped, continuations joined, and
    ``a && b`` as two commands."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    commands = [part.split("#")[0].strip() for line in lines for part in line.split("&&")]
    return [command for command in commands if command]


def extras() -> set[str]:
    """pyproject.toml's extras (read with a pattern: tomllib is Python 3.11's, and 3.10 is supported)."""
    section = (REPO_ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    return set(re.findall(r"^(\w+) = \[", section.split("\n[")[0], re.MULTILINE))


def test_every_readme_command_runs_as_written(user_dir):
    root, _ = user_dir
    from mach_jax import datasets
    from mach_jax.data.registry import get_dataset

    commands = readme_commands()
    assert "python -m pip install \".[test]\" && python -m pytest -q --durations=15" in (
        REPO_ROOT / ".ci" / "run").read_text()  # CI runs the README's test command verbatim
    seen = set()
    for command in commands:
        words = shlex.split(command)
        module = words[2] if words[:2] == ["python", "-m"] else words[0]
        seen.add(module)
        if module == "pip":  # an install: each extra it names exists
            assert words[3:4] == ["install"] and set(re.findall(r"\w+", words[4].strip(".[]"))) <= extras()
        elif module == "pytest":
            assert words[3:] == ["-q", "--durations=15"]
        elif module == "mach_jax.train":  # minutes of training: the flags must parse and validate
            run_in_process(module, *words[3:], "--print-config", cwd=root)
        elif words[3:4] == ["download"]:  # the network: the flags parse and the name is known
            get_dataset(datasets.parse_arguments(words[3:]).name)
        elif module in ("mach_jax.datasets", "mach_jax.evaluate", "mach_jax.predict"):
            result = run_in_process(module, *words[3:], cwd=root)
            assert result.returncode == 0 and "error" not in result.stderr
        else:
            pytest.fail(f"README command not classified by this test: {command}")
    assert (root / "top5.txt").read_text().count("\n") == 200  # predict wrote one line a point
    assert {"pip", "pytest", "mach_jax.train", "mach_jax.datasets", "mach_jax.evaluate", "mach_jax.predict"} <= seen


def test_the_readme_python_snippets_parse_and_import_what_exists():
    import mach_jax

    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(snippets) == 2
    for snippet in snippets:
        tree = ast.parse(snippet)
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names]
        # the estimator's snippet (marked in the README) names MachClassifier, which lands apart
        assert all(hasattr(mach_jax, name) or name == "MachClassifier" for name in imported), imported


# ---- written for users ----

def test_the_readme_is_short_and_names_no_internal_path():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    assert "../shared" not in text
    api = text[text.index("## Python API"):]
    assert api.index("MachClassifier") < api.index("MachEnsemble")  # the estimator first
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO_ROOT / link).is_file(), link


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_the_docs_speak_to_users(doc):
    text = doc.read_text()
    for internal in (r"\.\./shared", r"(?<![\w&])#\d+\b", r"\bthe issue\b", r"\bthis session\b", r"session's",
                     r"\bhelper\b", r"\bthe lead\b", r"\bour (development|2-core)", r"Intel Xeon"):
        assert not re.search(internal, text, re.IGNORECASE), (doc.name, internal)
    headings = {re.sub(r"[^\w -]", "", heading).strip().lower().replace(" ", "-")
                for heading in re.findall(r"^#+ (.+)$", README.read_text(), re.MULTILINE)}
    for anchor in re.findall(r"\]\(\.\./README\.md#([\w-]+)\)", text):
        assert anchor in headings, (doc.name, anchor)  # a link into the README that still leads somewhere
