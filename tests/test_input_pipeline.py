"""Fixed-shape batches, row caps, the epoch shuffle and the background prefetcher."""

import threading

import numpy as np
import pytest

from mach_jax.data import batches as ip
from support import from_rows
from mach_jax.errors import DataFormatError

ROWS = [{3: 1.0, 1: -5.0, 7: 2.0}, {}, {0: 0.5}, {9: 1.0, 2: 3.0, 4: -0.5, 6: 0.1}]
LABELS = [[2, 0], [], [1], [4, 3, 2]]
DATA = from_rows(ROWS, LABELS, num_features=10, num_labels=5, source="rows.txt")


def test_pad_rows_matches_a_python_loop():
    rows = np.array([3, -1, 0, 2, 1])
    ids, vals = ip.pad_rows(DATA.features, rows, width=4)
    for n, row in enumerate(rows):
        items = list(ROWS[row].items()) if row >= 0 else []
        assert ids[n, :len(items)].tolist() == [k for k, _ in items]
        np.testing.assert_array_equal(vals[n, :len(items)], np.float32([v for _, v in items]))
        assert not vals[n, len(items):].any() and not ids[n, len(items):].any()


def test_truncation_keeps_largest_magnitudes_in_file_order_and_error_names_the_line():
    capped = ip.cap_row_width(DATA.features, 2, "truncate", keep_largest=True, source="rows.txt",
                              what="features")
    kept = [capped.indices[capped.indptr[i]:capped.indptr[i + 1]].tolist() for i in range(4)]
    assert kept == [[1, 7], [], [0], [9, 2]]
    first = ip.cap_row_width(DATA.labels, 2, "truncate", keep_largest=False, source="rows.txt", what="labels")
    assert first.indices[first.indptr[3]:first.indptr[4]].tolist() == [4, 3]
    with pytest.raises(DataFormatError, match=r"rows.txt:2: point 0 has 3 features, more than the cap of 2"):
        ip.cap_row_width(DATA.features, 2, "error", keep_largest=True, source="rows.txt", what="features")


def test_batches_have_fixed_shapes_masks_and_a_seeded_shuffle():
    shape = ip.BatchShape(batch_size=3, max_nnz=4, max_labels=3)
    batches = list(ip.train_batches(DATA, shape, seed=5, epoch=0))
    assert len(batches) == 2 and all(b["feat_ids"].shape == (3, 4) for b in batches)
    assert batches[-1]["point_mask"].tolist() == [1, 0, 0]  # 4 points: the last batch is padded
    seen = np.concatenate([b["label_mask"].sum(1)[b["point_mask"] > 0] for b in batches])
    assert sorted(seen.tolist()) == sorted(len(l) for l in LABELS)
    np.testing.assert_array_equal(ip.epoch_order(4, 5, 0), ip.epoch_order(4, 5, 0))
    orders = {tuple(ip.epoch_order(100, 5, epoch)) for epoch in range(3)}
    assert len(orders) == 3
    resumed = list(ip.train_batches(DATA, shape, seed=5, epoch=0, start_batch=1))
    np.testing.assert_array_equal(resumed[0]["feat_ids"], batches[1]["feat_ids"])


def test_prefetcher_keeps_order_and_raises_producer_errors():
    with ip.Prefetcher(iter(range(50)), lambda x: x * 2, depth=2) as items:
        assert list(items) == [2 * i for i in range(50)]

    def broken():
        yield 1
        raise ValueError("bad row")

    with ip.Prefetcher(broken(), lambda x: x) as items:
        assert next(items) == 1
        with pytest.raises(ValueError, match="bad row"):
            next(items)


def test_prefetcher_stops_its_thread_when_closed_early():
    def endless():
        while True:
            yield 0

    prefetcher = ip.Prefetcher(endless(), lambda x: x, depth=2)
    next(prefetcher)
    prefetcher.close()
    assert not any(t.name == "mach_jax-prefetch" and t.is_alive() for t in threading.enumerate())
