"""``MachClassifier``: a scikit-learn style estimator over data held in Python.

    clf = MachClassifier(epochs=20).fit(X, Y)      # X: scipy.sparse / dense [N, D]; Y: indicator or id lists
    ids, scores = clf.predict(X_test, k=5)         # [N, k] each, best first
    clf.score(X_test, Y_test)                      # P@1; score(..., metric="nDCG@3") etc.
    clf.save("runs/text")                          # a workdir: mach_jax.evaluate and MachEnsemble.load read it

Any configuration field is a keyword argument by its leaf name (the command-line flag without its
dashes: ``epochs``, ``dropout``, ``learning_rate``, ``synthetic_seed``). Settings left out follow
the training data's shape (``config.sizing.rule_settings``: B, R, hidden size, epochs, batch size,
loss) unless a ``preset`` is named. ``get_params`` / ``set_params`` follow scikit-learn's
conventions, so the estimator works in ``Pipeline``, ``clone`` and ``GridSearchCV``; scikit-learn
itself is optional (``pip install ".[sklearn]"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mach_jax.cli import status_lines_on_stderr
from mach_jax.config import Config, get_preset, sizing
from mach_jax.data.csr import XCDataset
from mach_jax.data.in_memory import as_features, as_labels
from mach_jax.experiment import train_and_evaluate
from mach_jax.readout import xc_metrics
from mach_jax.readout.ensemble import MachEnsemble
from mach_jax.readout.export import export_params
from mach_jax.storage import run_file

log = logging.getLogger("mach_jax")

try:  # scikit-learn's base class gives repr, tags and the checks GridSearchCV runs; optional
    from sklearn.base import BaseEstimator as _Base
except ImportError:  # pragma: no cover - the core install has no scikit-learn
    _Base = object

_EXPLICIT = ("num_repetitions", "num_buckets", "preset", "workdir", "verbose")
_FROM_FIT = {"data.train_path", "data.test_path", "data.dataset"}  # fit(X, Y) holds the data
_METRIC = re.compile(r"^(P|nDCG|PSP)@([1-9]\d*)$")


def config_leaves() -> dict[str, str]:
    """Leaf name -> dotted config field, for every field (``epochs`` -> ``train.epochs``,
    ``synthetic_seed`` -> ``data.synthetic.seed``): the command-line flags' names."""
    names: dict[str, str] = {}

    def walk(cls: type, path: str, prefix: str) -> None:
        for field in dataclasses.fields(cls):
            default = getattr(cls(), field.name)
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{path}.{field.name}", f"{field.name}_")
            else:
                names[prefix + field.name] = f"{path}.{field.name}"

    for section in dataclasses.fields(Config):
        walk(type(getattr(Config(), section.name)), section.name, "")
    return {name: path for name, path in names.items() if path not in _FROM_FIT}


class MachClassifier(_Base):
    """MACH on in-memory data: R classifiers over B hash buckets each, read out as a count-min sketch.

    Args:
      num_repetitions: R, or None (from the data's shape, or the preset's).
      num_buckets: B, or None (from the data's shape, or the preset's; 0: the preset sizes it).
      preset: a named preset (``mach_jax.get_preset``) to start from, or None: every setting not
        given follows the data's shape (``config.sizing.rule_settings``).
      workdir: where the run is trained and kept, or None: a temporary folder (``save`` keeps it).
      verbose: log the start-up lines (data, model, sizing) to stderr during ``fit``.
      **config: any configuration field by its leaf name (``epochs=20``, ``dropout=0.3``).

    Attributes (after ``fit``): ``ensemble_`` (the trained ``MachEnsemble``), ``config_`` (the run's
    config, sizes filled in), ``n_features_in_`` (D), ``num_labels_`` (L), ``workdir_``, ``metrics_``
    (the run's metrics.json: ``train_seconds``; ``score`` evaluates).
    """

    def __init__(self, num_repetitions: int | None = None, num_buckets: int | None = None,
                 preset: str | None = None, workdir: str | None = None, verbose: bool = True, **config):
        self.num_repetitions = num_repetitions
        self.num_buckets = num_buckets
        self.preset = preset
        self.workdir = workdir
        self.verbose = verbose
        self._config_names: list[str] = []
        self._set_config(config)

    # scikit-learn's conventions: the keyword settings are parameters like the named ones.
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in _EXPLICIT},
                **{name: getattr(self, name) for name in self._config_names}}

    def set_params(self, **params) -> "MachClassifier":
        for name in [name for name in params if name in _EXPLICIT]:
            setattr(self, name, params.pop(name))
        self._set_config(params)
        return self

    def _set_config(self, config: dict[str, Any]) -> None:
        leaves = config_leaves()
        for name, value in config.items():
            if name not in leaves:
                close = sorted((leaf for leaf in leaves if name in leaf or leaf in name),  # the nearest first
                               key=lambda leaf: -difflib.SequenceMatcher(None, name, leaf).ratio())[:5]
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"MachClassifier: {name!r} is not a configuration field{hint} "
                                 "(fit(X, Y) takes the data: no paths)" if f"data.{name}" in _FROM_FIT else
                                 f"MachClassifier: {name!r} is not a configuration field{hint}")
            setattr(self, name, value)
            if name not in self._config_names:
                self._config_names.append(name)

    def __sklearn_clone__(self):
        return type(self)(**self.get_params(deep=False))

    def build_config(self, labels) -> Config:
        """The config ``fit`` trains with on these [N, L] labels (the choices from their shape logged)."""
        shape = sizing.DataShape(labels.num_cols, labels.num_rows, labels.values.size / max(labels.num_rows, 1))
        leaves = config_leaves()
        given = {leaves[name]: getattr(self, name) for name in self._config_names}
        for name in ("num_repetitions", "num_buckets"):
            if getattr(self, name) is not None:
                given[f"model.{name}"] = getattr(self, name)
        if self.preset is not None:
            config = get_preset(self.preset)
        else:  # every setting the caller leaves out follows the data's shape
            auto = sizing.rule_settings(shape)
            for line in sizing.explain_settings(shape, auto, set(given)):
                log.info(line)
            config = Config().replace(**{section: {key: value for key, value in fields.items()
                                                   if f"{section}.{key}" not in given}
                                         for section, fields in auto.items()})
        tree: dict[str, Any] = {}
        for path, value in given.items():
            *parents, leaf = path.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return config.replace(**tree).validate()

    def fit(self, X, Y) -> "MachClassifier":
        """Trains on features X [N, D] and labels Y [N, L] (a 0/1 indicator or id lists).

        Raises:
          ValueError: bad shapes, NaN or infinite values, negative or repeated label ids, fewer
            than 2 classes, no points (before anything is trained).
        """
        features = as_features(X, what="X")
        labels = as_labels(Y, features.num_rows, what="Y")
        if features.num_rows == 0:
            raise ValueError("X has no rows: nothing to train on")
        if labels.num_cols < 2:
            raise ValueError(f"Y has {labels.num_cols} classes; MACH needs at least 2")
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mach_jax_")  # removed with the estimator
            workdir = Path(self._tmp.name) / "run"
        else:
            workdir = Path(self.workdir)
        with status_lines_on_stderr() if self.verbose else contextlib.nullcontext():
            config = self.build_config(labels)
            data = XCDataset(features, labels, "<fit(X, Y)>")
            self.metrics_ = train_and_evaluate(config, workdir, progress=False, train_data=data)
        self._loaded(workdir)
        return self

    def _loaded(self, workdir: Path) -> None:
        self.workdir_ = workdir
        self.ensemble_ = MachEnsemble.load(workdir)
        self.config_ = self.ensemble_.config
        self.n_features_in_ = self.ensemble_.info.num_features
        self.num_labels_ = self.ensemble_.info.num_labels

    def _fitted(self) -> MachEnsemble:
        if not hasattr(self, "ensemble_"):
            raise RuntimeError("this MachClassifier is not fitted yet: call fit(X, Y) (or MachClassifier.load)")
        return self.ensemble_

    def predict(self, X, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The top-k classes of every row of X [N, D]: ``(ids int32 [N, k], scores float32 [N, k])``,
        best first."""
        ensemble = self._fitted()
        features = as_features(X, self.n_features_in_, what="X")
        scores, ids = ensemble.predict(features, k=k, source="X")
        return ids, scores

    def predict_scores(self, X, classes) -> np.ndarray:
        """float32 [N, len(classes)]: the ensemble's score of each given class for every row of X.

        It reads out all L classes, so it is meant for L up to about 10^4.
        """
        classes = np.asarray(classes)
        if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer) or (
                classes.size and (classes.min() < 0 or classes.max() >= self._fitted().info.num_labels)):
            raise ValueError(f"classes: a 1-D list of class ids in [0, {self.num_labels_}) is needed")
        ids, scores = self.predict(X, k=self.num_labels_)
        by_class = np.empty_like(scores)
        np.put_along_axis(by_class, ids.astype(np.int64), scores, axis=1)
        return by_class[:, classes]

    def score(self, X, Y, metric: str = "P@1") -> float:
        """``metric`` (P@k, nDCG@k or PSP@k, any k <= L) of the predictions on X [N, D] against Y."""
        match = _METRIC.match(metric)
        if not match:
            raise ValueError(f"metric={metric!r}: must be P@k, nDCG@k or PSP@k (e.g. 'P@1', 'nDCG@5')")
        ensemble = self._fitted()
        features = as_features(X, self.n_features_in_, what="X")
        labels = as_labels(Y, features.num_rows, self.num_labels_, what="Y")
        if metric in ("P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5") and (
                int(match[2]) <= self.num_labels_):  # as the command line reports it
            return float(ensemble.evaluate(XCDataset(features, labels, "Y"), progress=False)[metric])
        k = int(match[2])
        ids, _ = self.predict(features, k=k)
        if match[1] == "P":
            return float(xc_metrics.precision(labels, ids, k)[-1])
        if match[1] == "nDCG":
            return float(xc_metrics.ndcg(labels, ids, k)[-1])
        inv_psp = np.asarray(ensemble.inv_propensity)
        return float(xc_metrics.psprecision(labels, ids, inv_psp, k)[-1])

    def save(self, path: str | Path, for_serving: bool = False, dtype: str = "float32",
             num_members: int | None = None) -> Path:
        """Writes the trained run to the new folder ``path`` and returns it.

        ``for_serving``: the parameters alone (no optimiser moments, no resuming), stored in
        ``dtype`` ("float32", "bfloat16", "float16"), the first ``num_members`` members (None: all);
        otherwise a copy of the whole workdir. Either is read by ``MachClassifier.load``,
        ``MachEnsemble.load`` and ``python -m mach_jax.evaluate --workdir``.
        """
        self._fitted()
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path}: not empty; save to a new folder")
        if for_serving:
            return export_params(path, self.workdir_, dtype=dtype, num_members=num_members)
        if dtype != "float32" or num_members is not None:
            raise ValueError("dtype and num_members apply to save(..., for_serving=True)")
        if path.exists():
            path.rmdir()
        shutil.copytree(self.workdir_, path)
        return path

    @classmethod
    def load(cls, path: str | Path, verbose: bool = True) -> "MachClassifier":
        """A fitted estimator from a workdir (``save``'s, or one ``mach_jax.train`` wrote)."""
        path = Path(path)
        config = run_file.read_run_file(path).config if (path / run_file.CONFIG_FILE).exists() else None
        estimator = cls(workdir=str(path), verbose=verbose,
                        num_repetitions=config.model.num_repetitions if config else None,
                        num_buckets=config.model.num_buckets if config else None)
        estimator._loaded(path)
        return estimator
