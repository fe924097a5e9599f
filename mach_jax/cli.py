"""Command-line flags generated from the config dataclasses, so defaults live in one place.

Every config field gets a flag (``model.num_buckets`` -> ``--num-buckets``, synthetic-data fields
get a ``--synthetic-`` prefix); common ones have short aliases (``-R``, ``-B``, ``--lr``, ...). A
flag that is not given leaves the preset's value untouched.

The commands' parsers (``ArgumentParser``) take whole flag names only (``--top`` is not
``--top-buckets``), and a bad flag or value is a ``ConfigError``: one ``error:`` line and status 2
from ``run_cli``, the one place every expected failure is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Iterator
from typing import Callable

from mach_jax.config import (AGGREGATIONS, DECODERS, DEVICE_DATA, EMBEDDING_OPTIMIZERS, EMBEDDING_UPDATES, HOST_LOADERS, INPUT_LAYERS,
                             LABEL_BUCKETS,
                             INPUT_TRANSFORMS, KERNEL_FORMS, LR_SCHEDULES, OVERFLOW_POLICIES, PRECISIONS, PRESETS, RERANK_UPDATES,
                             RERANKER_USES,
                             Config, get_preset)
from mach_jax.config.flag_values import converter
from mach_jax.errors import USER_ERRORS, ConfigError, TrainingInterrupted
from mach_jax.storage import host_memory, orbax_noise

_ALIASES = {
    "data.train_path": ["--train"],
    "data.test_path": ["--test"],
    "data.dataset": ["--data"],
    "model.num_repetitions": ["-R"],
    "parallel.rep_range": ["--reps"],
    "model.num_buckets": ["-B", "--buckets"],
    "model.hidden_sizes": ["--hidden"],
    "train.learning_rate": ["--lr"],
    "eval.eval_repetitions": ["--eval-reps"],
    "rerank.shortlist_size": ["--rerank-shortlist"],
    "rerank.rerank_learning_rate": ["--rerank-lr"],
}

_CHOICES = {
    "data.overflow": OVERFLOW_POLICIES,
    "data.input_transform": INPUT_TRANSFORMS,
    "data.host_loader": HOST_LOADERS,
    "data.device_data": DEVICE_DATA,
    "model.input_layer": INPUT_LAYERS,
    "model.kernel_forms": KERNEL_FORMS,
    "model.precision": PRECISIONS,
    "train.embedding_update": EMBEDDING_UPDATES,
    "train.embedding_optimizer": EMBEDDING_OPTIMIZERS,
    "train.lr_schedule": LR_SCHEDULES,
    "eval.aggregation": AGGREGATIONS,
    "eval.decoder": DECODERS,
    "eval.reranker": RERANKER_USES,
    "rerank.rerank_update": RERANK_UPDATES,
    "partition.label_buckets": LABEL_BUCKETS,
}


class ArgumentParser(argparse.ArgumentParser):
    """The commands' parser: whole flag names only, and a bad flag or value raises ConfigError
    (one ``error:`` line and status 2 through ``run_cli``) instead of printing the usage."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        if message.startswith(("unrecognized arguments", "the following arguments are required")):
            message += f" (python -m {self.prog.split()[-1]} --help lists the flags)"
        raise ConfigError(message.removeprefix("argument "))


class _NamedStdout:
    """stdout as the command writes it: a failed write or flush (a full disk behind ``> file``)
    is an OSError naming stdout; everything else is the stream's own."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        with _naming_stdout():
            return self._stream.write(text)

    def flush(self) -> None:
        with _naming_stdout():
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _naming_stdout() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as error:
        raise _on_stdout(error) from None


def _on_stdout(error: OSError) -> OSError:
    return OSError(error.errno, error.strerror or str(error), "stdout")


def _config_fields(cls, path: str, prefix: str = ""):
    for field in dataclasses.fields(cls):
        default = getattr(cls(), field.name)
        if dataclasses.is_dataclass(default):
            yield from _config_fields(type(default), f"{path}.{field.name}", f"{field.name}-")
        else:
            yield f"{path}.{field.name}", prefix + field.name.replace("_", "-"), field


def add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...],
                     with_preset: bool = True, skip: tuple[str, ...] = ()) -> None:
    """Adds ``--preset`` (optional) and one flag per field of the named config sections, but
    none for the dotted fields in ``skip`` (those that play no part in the command)."""
    if with_preset:
        parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                            help="named settings to start from (default: default)")
        parser.add_argument("--config", default=None, metavar="FILE",
                            help="start from this config file instead of a preset: a workdir's config.json, "
                                 "or a JSON tree written by hand ({\"model\": {\"num_buckets\": 2000}}); "
                                 "flags override it")
    from mach_jax.core.losses import LOSSES  # the registry imports JAX: only when flags are built

    choices = dict(_CHOICES, **{"train.loss": (*LOSSES, "auto")})
    for section in sections:
        group = parser.add_argument_group(f"{section} settings")
        section_cls = type(getattr(Config(), section))
        for path, flag, field in _config_fields(section_cls, section):
            if path in skip:
                continue
            default = getattr(get_preset("default"), section)
            for part in path.split(".")[1:]:
                default = getattr(default, part)
            group.add_argument(f"--{flag}", *_ALIASES.get(path, []), dest=path, default=None,
                               type=converter(path, field.type), choices=choices.get(path),
                               metavar=None if path in choices else field.name.split("_")[-1].upper(),
                               help=f"{path} (default preset: {default})")


def flag_of(field: str) -> str | None:
    """The command-line flag of a dotted config field: ``model.num_buckets`` -> ``--num-buckets``."""
    section, _, _ = field.partition(".")
    if section not in {f.name for f in dataclasses.fields(Config)}:
        return None
    flags = {path: flag for path, flag, _ in _config_fields(type(getattr(Config(), section)), section)}
    return f"--{flags[field]}" if field in flags else None


def flag_overrides(args: argparse.Namespace) -> dict[str, dict]:
    """The config flags the user gave, as ``{section: {field: value}}`` (nested for sub-sections)."""
    overrides: dict[str, dict] = {}
    for key, value in vars(args).items():
        if "." not in key or value is None:
            continue
        section, *rest = key.split(".")
        node = overrides.setdefault(section, {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    return overrides


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset (or ``--config`` file), with every flag the user gave written over it."""
    preset, config_file = getattr(args, "preset", None), getattr(args, "config", None)
    if config_file is not None:
        if preset is not None:
            raise ConfigError("give --preset or --config, not both (a config file holds every setting)")
        from mach_jax.config.files import read_config_file

        base = read_config_file(config_file)
    else:
        base = get_preset(preset or "default")
    return base.replace(**flag_overrides(args))


@contextlib.contextmanager
def errors_named_by_source(args: argparse.Namespace) -> Iterator[None]:
    """A ConfigError raised in the block for a field whose value came from the ``--config`` file,
    not from a flag, is reported as the file's (a flag error would send the user to a flag they
    never gave)."""
    try:
        yield
    except ConfigError as error:
        config_file = getattr(args, "config", None)
        if config_file is None or error.field is None or getattr(args, error.field, None) is not None:
            raise
        raise ConfigError(f"{config_file}: {error.field}: {error}") from None


def run_cli(main: Callable[[], int], process_ends: bool = True) -> None:
    """Runs a CLI body: expected errors print one clear line and exit 2, no traceback.

    Expected errors are those of ``errors.USER_ERRORS`` and any ``OSError`` (a file that cannot
    be read or written: permissions, a folder where a file should be, a full disk). The status
    lines' handler and Orbax's noise filters are the command's own, removed when it returns;
    where the process ends with the command (``process_ends``, as under ``python -m``), the
    unraisable hook that drops a failed restore's leftover reads stays for the shutdown, and
    glibc keeps freed memory for reuse (``host_memory.reuse_freed_memory``).
    """
    if process_ends:  # process-wide, for the command's process alone
        host_memory.reuse_freed_memory()
    with status_lines_on_stderr(), orbax_noise.quieted(hook_until_exit=process_ends):
        _run_reporting_errors(main)


@contextlib.contextmanager
def status_lines_on_stderr() -> Iterator[None]:
    """The ``mach_jax`` logger's INFO lines on stderr (as bare messages) for the ``with`` block,
    unless a handler is set already; the logger is left as it was found."""
    logger = logging.getLogger("mach_jax")
    if logger.handlers:
        yield
        return
    saved = logger.level, logger.propagate
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved


def _run_reporting_errors(main: Callable[[], int]) -> None:
    stdout = sys.stdout
    try:
        sys.stdout = _NamedStdout(stdout)
        code = main()
        sys.stdout.flush()  # here, not at exit: a full disk behind stdout is one line naming stdout
        sys.exit(code)
    except ConfigError as error:
        flag = flag_of(error.field) if error.field else None
        _fail(f"{flag + ': ' if flag else ''}{error}")
    except BrokenPipeError:  # stdout's reader left early (``| head``): nothing more to say
        _detach_stdout()
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer its reader left
    except OSError as error:
        _fail(describe_os_error(error))
    except USER_ERRORS as error:
        _fail(str(error))
    except TrainingInterrupted as interrupted:
        print(f"stopped: {interrupted}", file=sys.stderr)
        sys.exit(128 + interrupted.signum)
    except KeyboardInterrupt:  # outside the training loop (which saves first): nothing to save
        print("stopped: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if isinstance(sys.stdout, _NamedStdout):
            sys.stdout = stdout


def describe_os_error(error: OSError) -> str:
    """'PATH: Permission denied'; for a failed rename (a temporary file onto its target), the
    target's path; else the error's own text."""
    if error.filename is None or not error.strerror:
        return str(error)
    if error.filename2 is not None:
        return f"cannot write {error.filename2}: {error.strerror}"
    return f"{error.filename}: {error.strerror}"


def _fail(message: str) -> None:
    """The one ``error:`` line (a message of several lines is joined into one) and status 2."""
    print("error: " + " ".join(message.split("\n")), file=sys.stderr)
    sys.exit(2)


def _detach_stdout() -> None:
    """Points stdout at /dev/null, so that flushing it at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (tests): nothing to do
        pass


def warn_if_unfinished(ensemble, workdirs: list[str], doing: str) -> None:
    """One ``warning:`` line on stderr when the ensemble (a ``readout.MachEnsemble`` loaded from
    ``workdirs``) was restored from a step before its run's final one; ``doing``: "evaluating"."""
    step, final = ensemble.checkpoint_step, ensemble.final_step
    if step is not None and step < final:
        logging.getLogger("mach_jax").warning(
            f"warning: {', '.join(map(str, workdirs))}: {doing} step {step} of {final}: the run has not "
            "finished (or another run is writing here)")
