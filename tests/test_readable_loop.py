"""The training loop a reader can follow: the first jitted step within 5 frames of our code below
``main``, one function that shows the step order, the run resolved once per command, and no
process-wide change made by the library (only ``cli.run_cli`` changes logging and hooks, and
restores them)."""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import pytest

import support
from mach_jax import Config, get_preset
from mach_jax.config import sizing
from mach_jax.training import loop

PACKAGE = Path(loop.__file__).resolve().parents[1]
ARGS = ["--preset", "tiny", "--quiet", "-B", "0", "--epochs", "1", "--workdir", "w"]


@pytest.fixture(scope="module")
def first_step_and_counts(tmp_path_factory):
    """One tiny ``python -m mach_jax.train`` in this process (B from the data, so it is sized),
    with the stack at its first jitted train step and the calls of validate and sizing counted."""
    found = {"stack": None, "validate": 0, "sizing": 0}
    original_build, original_validate = loop.build_program, Config.validate
    original_size = sizing.size_from_data

    def build_program(*args, **kwargs):
        program = original_build(*args, **kwargs)
        step = program.train_step

        def recorded_step(*step_args, **step_kwargs):
            if found["stack"] is None:
                found["stack"] = [(Path(frame.filename).resolve(), frame.function) for frame in inspect.stack()[1:]]
            return step(*step_args, **step_kwargs)
        return program.__class__(**{**program.__dict__, "train_step": recorded_step})

    def validate(self):
        found["validate"] += 1
        return original_validate(self)

    def size_from_data(*args, **kwargs):
        found["sizing"] += 1
        return original_size(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "build_program", build_program)
        patch.setattr(Config, "validate", validate)
        patch.setattr(sizing, "size_from_data", size_from_data)
        support.run_in_process("mach_jax.train", *ARGS, cwd=tmp_path_factory.mktemp("run"))
    return found


def test_the_first_jitted_step_is_at_most_five_frames_of_our_code_below_main(first_step_and_counts):
    ours = [(path, function) for path, function in first_step_and_counts["stack"] if PACKAGE in path.parents]
    functions = [function for _, function in ours]
    below_main = functions[:functions.index("main")]  # innermost first
    assert 1 <= len(below_main) <= 5, below_main
    assert "run_loop" in below_main  # the one loop, for every route


def test_the_loop_shows_the_step_order_in_one_short_function():
    source = inspect.getsource(loop.run_loop)
    assert len(source.splitlines()) <= 80
    source = source[source.index("with StopOnSignals()"):]  # the body, not the docstring
    order = [source.index(mark) for mark in
             ("update(state)", "loss_log.flush()", "evaluate(step, state)", "save(step, state)", "TrainingInterrupted")]
    assert order == sorted(order)


def test_the_reranker_trains_through_the_same_loop():
    from mach_jax.training import rerank_loop

    assert "loop.run_loop(" in inspect.getsource(rerank_loop)


def test_validate_and_sizing_run_once_per_command(first_step_and_counts):
    assert first_step_and_counts["validate"] == 1
    assert first_step_and_counts["sizing"] == 1


def test_a_library_call_changes_no_hook_or_logger_filter(tmp_path):
    from mach_jax.experiment import train_and_evaluate
    from mach_jax.storage import checkpoints

    loggers = [logging.getLogger(name) for name in ("absl", "asyncio", "mach_jax", "")]
    before = (sys.unraisablehook, [list(logger.filters) for logger in loggers],
              [list(logger.handlers) for logger in loggers])
    config = get_preset("tiny").replace(train={"epochs": 1})
    train_and_evaluate(config, tmp_path / "w", progress=False)
    train_and_evaluate(config, tmp_path / "w", progress=False)  # a resume: restores a checkpoint
    assert checkpoints.restore_latest  # the restore path ran above (resume)
    after = (sys.unraisablehook, [list(logger.filters) for logger in loggers],
             [list(logger.handlers) for logger in loggers])
    assert after == before


def test_the_command_line_restores_what_it_changed(tmp_path):
    hook = sys.unraisablehook
    filters = list(logging.getLogger("absl").filters)
    support.run_in_process("mach_jax.train", "--help", cwd=tmp_path, check=False)  # process_ends=False
    assert sys.unraisablehook is hook and logging.getLogger("absl").filters == filters


def test_validate_runs_once_with_a_config_file_too(tmp_path, monkeypatch):
    (tmp_path / "tiny.json").write_text(get_preset("tiny").replace(train={"epochs": 1}).to_json())
    calls, original = [], Config.validate
    monkeypatch.setattr(Config, "validate", lambda self: calls.append(1) or original(self))
    support.run_in_process("mach_jax.train", "--config", "tiny.json", "--quiet", "--workdir", "w", cwd=tmp_path)
    assert len(calls) == 1
