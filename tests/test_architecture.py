"""The package's shape: imports only go downward, training never imports the read-out, no
import cycles, and modules and functions stay small (issue: one obvious place for each concern).

Read from the source with ``ast`` (function-level imports included), so nothing is imported.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mach_jax"

# Lower layers first. A module may import its own subpackage and any lower layer, never a peer
# or a higher layer: data and core know nothing of each other, nor training and readout.
LAYERS = [
    {"errors", "hardware"},
    {"config"},
    {"data", "core"},
    {"storage"},
    {"training", "readout"},
    {"rerank_stage"},  # the second stage: read-out shortlists handed to the re-ranker's training
    {"experiment", "cli"},
    {"estimator"},  # the scikit-learn style estimator: training and read-out over in-memory data
    {"train", "evaluate", "predict", "rerank", "datasets", "plot", "tfds", "__init__"},  # the commands
]
# Imports that run up, each with why (none today). Each entry must still exist (tested).
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}
MAX_MODULE_LINES = 320  # "about 300"
MAX_FUNCTION_LINES = 55  # "about 50"; a longer one says why in a "# Long:" comment above it


def unit_of(module: str) -> str:
    """The layer unit of a dotted module: its subpackage, or the top-level module's own name."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def layer_of(unit: str) -> int:
    return next(index for index, units in enumerate(LAYERS) if unit in units)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The mach_jax modules a file imports (``from mach_jax.x import y`` counts mach_jax.x.y when
    that is a module, else mach_jax.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mach_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mach_jax"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found & known


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_has_a_layer(graph):
    for name in graph:
        layer_of(unit_of(name))  # StopIteration names a module no layer holds


def test_imports_only_go_down(graph):
    upward = {(name, target) for name, targets in graph.items() for target in targets
              if unit_of(target) != unit_of(name) and layer_of(unit_of(target)) >= layer_of(unit_of(name))}
    unexplained = sorted(f"{name} imports {target}" for name, target in upward - set(ALLOWED_UPWARD))
    assert not unexplained, "imports that run up or sideways:\n" + "\n".join(unexplained)
    assert set(ALLOWED_UPWARD) <= upward, "an allowed exception no longer exists: remove it"


def test_training_never_imports_the_read_out(graph):
    offenders = {name: sorted(t for t in targets if t.startswith("mach_jax.readout"))
                 for name, targets in graph.items() if name.startswith("mach_jax.training")}
    assert not any(offenders.values()), offenders


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_architecture_checks_catch_what_they_claim(tmp_path):
    """The checks themselves, on a made-up import: an upward one is seen, a cycle too."""
    assert layer_of(unit_of("mach_jax.training.loop")) > layer_of(unit_of("mach_jax.data.csr"))
    source = tmp_path / "probe.py"
    source.write_text("from mach_jax.readout import decode\nfrom mach_jax import cli\n")
    known = {"mach_jax.readout.decode", "mach_jax.cli", "mach_jax"}
    assert imports_of(source, known) == {"mach_jax.readout.decode", "mach_jax.cli"}


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                explained = first >= 2 and lines[first - 2].strip().startswith("# Long:")
                if length > MAX_FUNCTION_LINES and not explained:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
