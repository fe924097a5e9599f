"""The second stage: a shortlist re-ranker for a trained ensemble (``core.reranker``).

    fit_reranker(config, [workdir], train_data)   # shortlists from the read-out, then training

Every training point's shortlist is the ensemble's own read-out (its K best classes, by the
decoder ``eval.decoder`` names), so the re-ranker learns against the negatives it will meet; the
members are not touched. The result is saved under ``workdir/rerank/`` and used from then on by
``MachEnsemble.load`` (evaluate, predict, export) unless ``eval.reranker`` is "off".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax
import numpy as np

from mach_jax.config import Config, RerankConfig
from mach_jax.core import reranker, reranker_lazy
from mach_jax.data import batches
from mach_jax.data.csr import XCDataset
from mach_jax.errors import ConfigError
from mach_jax.readout import rerank_mix
from mach_jax.readout.ensemble import MachEnsemble
from mach_jax.readout.metrics import KS
from mach_jax.readout.rerank import mach_log_score
from mach_jax.storage import rerank_store
from mach_jax.training.rerank_loop import train_reranker

log = logging.getLogger("mach_jax")


def fit_reranker(config: Config, workdirs: list[Path], train_data: XCDataset,
                 progress: bool = True) -> reranker.RerankParams | None:
    """Trains (or resumes, or keeps the finished) re-ranker of the ensemble in ``workdirs``.

    Returns the trained parameters (class rows sharded over the devices), None when a finished
    re-ranker was kept.

    Args:
      config: its ``rerank`` section gives the settings, ``train.seed`` the seed.
      workdirs: the ensemble (one workdir, or its groups); the re-ranker goes to the first.
      train_data: the training data (less any validation split): the members' points and the
        ones held out from them and from the re-ranker to choose its mix on (``members_points``).
    """
    if not config.rerank.enabled:
        raise ConfigError("rerank.shortlist_size=0: give the shortlist size K (e.g. 100) to train a "
                          "re-ranker", field="rerank.shortlist_size")
    settings = resolved_settings(config.rerank, train_data)
    require_one_process()
    ensemble = MachEnsemble.load(*workdirs, **{**dataclasses.asdict(config.eval), "reranker": "off"})
    identity = {"num_features": ensemble.info.num_features, "num_labels": ensemble.info.num_labels,
                "num_members": len(ensemble.rep_ids), "members_step": ensemble.checkpoint_step,
                "num_train_points": train_data.num_points,
                "settings": settings.training_fields(), "shortlist_from": ensemble.decoder().describe()}
    record = rerank_store.read_record(workdirs[0], current_only=False)  # a stale one: check_resumable says so
    rerank_store.check_resumable(workdirs[0], record, identity)
    if record is not None and record.get("finished") and (settings.mix_holdout_frac == 0 or "mix_choice" in record):
        log.info("the re-ranker in %s is trained already", rerank_store.rerank_dir(workdirs[0]))
        return None
    require_shortlist_within(settings.shortlist_size, ensemble.info.num_labels)
    start = time.perf_counter()
    scores, shortlist = ensemble.predict(train_data.features, k=settings.shortlist_size, source=train_data.source,
                                         progress=progress)
    log.info("shortlists of %d training points in %.1f s", train_data.num_points, time.perf_counter() - start)
    labels = batches.cap_row_width(train_data.labels, settings.rerank_max_labels, "truncate", keep_largest=False,
                                   source=train_data.source, what="labels")
    data = XCDataset(ensemble.member_features(train_data.features, train_data.source), labels, train_data.source)
    train_rows, held_rows = mix_split(config, data.num_points)
    if not len(held_rows):
        return train_reranker(settings, config.train.seed, workdirs[0], data, shortlist, identity, progress)
    held = XCDataset(data.features.take(held_rows), train_data.labels.take(held_rows), f"{train_data.source} [held out]")
    params = train_reranker(settings, config.train.seed, workdirs[0], data.take(train_rows), shortlist[train_rows],
                            identity, progress)
    choice = choose_mix(params, held, scores[held_rows], shortlist[held_rows], len(ensemble.rep_ids),
                        config.eval.aggregation)
    rerank_store.write_record(workdirs[0], {**rerank_store.read_record(workdirs[0], current_only=False),
                                            "mix_choice": choice.as_record()})
    return params


def resolved_settings(settings: RerankConfig, train_data: XCDataset) -> RerankConfig:
    """The ``rerank`` section with "auto" resolved from the data's shape (``rerank_update``)."""
    if settings.rerank_update != "auto":
        return settings
    points = max(train_data.num_points, 1)
    share = reranker_lazy.touched_share(train_data.num_features, train_data.num_labels,
                                        len(train_data.features.indices) / points, len(train_data.labels.indices) / points,
                                        settings.rerank_batch_size, settings.shortlist_size, settings.sampled_negatives)
    update = reranker_lazy.resolve_update("auto", share)
    log.info("re-ranker updates: %s (a step touches at most %.0f%% of the D + L rows; lazy from %.0f%%)", update,
             100 * share, 100 * reranker_lazy.LAZY_TOUCHED_SHARE)
    return dataclasses.replace(settings, rerank_update=update)


def mix_split(config: Config, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, held_rows)`` of the training data: the points held out from the members and
    the re-ranker to choose its mix on (``rerank.mix_holdout_frac``; none without a re-ranker)."""
    frac = config.rerank.mix_holdout_frac if config.rerank.enabled else 0.0
    return rerank_mix.held_out_rows(num_points, frac, config.train.seed)


def members_points(config: Config, train_data: XCDataset) -> XCDataset:
    """The training points the members learn from: all of ``train_data`` but ``mix_split``'s
    held-out ones."""
    train_rows, held_rows = mix_split(config, train_data.num_points)
    if not len(held_rows):
        return train_data
    log.info("%d of the %d training points held out to choose the re-ranker's mix on (--mix-holdout-frac %g)",
             len(held_rows), train_data.num_points, config.rerank.mix_holdout_frac)
    return train_data.take(train_rows, f"{train_data.source} [minus {len(held_rows)} held out]")


def choose_mix(params: reranker.RerankParams, held: XCDataset, scores: np.ndarray, shortlist: np.ndarray,
               num_members: int, aggregation: str) -> rerank_mix.MixChoice:
    """The mix chosen on the held-out points (``readout.rerank_mix``), logged with its trials.

    Args:
      held: the held-out points, features as the members saw them; scores, shortlist: [M, K],
        their read-out (summed over the ``num_members`` members, by ``aggregation``)."""
    own = rerank_mix.own_log_softmax(params, held, shortlist)
    mach = np.asarray(mach_log_score(jax.numpy.asarray(scores), num_members, aggregation))
    choice = rerank_mix.choose_mix(own, mach, shortlist, held.labels)
    trials = ", ".join(f"{name} {100 * values[0]:.2f}/{100 * values[-1]:.2f}" for name, values in choice.trials.items())
    chosen = rerank_mix.MEMBERS_ALONE if choice.mix is None else f"mix {choice.mix:g}"
    log.info("re-ranker mix on %d held-out training points (P@1/P@5): %s; chosen: %s", choice.num_points, trials,
             chosen)
    return choice


def require_shortlist_within(shortlist_size: int, num_labels: int) -> None:
    """A shortlist of K classes needs K < L: refused up front (once the data's L is known,
    before the members train), naming both."""
    if shortlist_size >= num_labels:
        raise ConfigError(f"rerank.shortlist_size={shortlist_size}: a shortlist must be shorter than the "
                          f"model's L={num_labels} classes; give --rerank-shortlist below {num_labels}",
                          field="rerank.shortlist_size")


def require_one_process() -> None:
    """The re-ranker trains in one process: a multi-process run is refused (before its members
    train, when ``experiment`` asks first)."""
    if jax.process_count() > 1:
        raise ConfigError("the re-ranker trains in one process: train the members without "
                          "--rerank-shortlist, then run python -m mach_jax.rerank --workdir W in one process",
                          field="rerank.shortlist_size")


def evaluate_with_reranker(config: Config, workdirs: list[Path], eval_data: XCDataset, without: dict,
                           progress: bool = True) -> dict:
    """The re-ranked ensemble's metrics on ``eval_data``, read out with ``config.eval`` (as
    ``without`` was: the metrics of the same ensemble read out alone, kept under
    ``"without_reranker"``)."""
    ensemble = MachEnsemble.load(*workdirs, **dataclasses.asdict(config.eval))
    result = ensemble.evaluate(eval_data, progress=progress)
    result["without_reranker"] = {name: without[name] for name in without
                                  if name.split("@")[0] in ("P", "nDCG", "PSP") and int(name.split("@")[1]) in KS}
    record = rerank_store.read_record(workdirs[0]) or {}
    if "mix_choice" in record:  # what the held-out points chose, and the trials behind it
        result["rerank_mix_choice"] = record["mix_choice"]
    return result
