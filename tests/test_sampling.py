"""Training batch orders: deterministic, complete, and length-bucketed (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest

from cora.train.sampling import EpochBatches, padding_fraction


def _lengths(n=1000, seed=0):
    # ML-1M-like prompt lengths: 60-260 tokens.
    return np.random.default_rng(seed).integers(60, 260, size=n)


@pytest.mark.parametrize("window", [1, 8, 32])
def test_every_row_once_per_epoch_and_same_seed_same_batches(window):
    lengths = _lengths(1003)
    s = EpochBatches(1003, 8, seed=3, lengths=lengths, window=window)
    first = list(s)
    assert sorted(r for b in first for r in b) == list(range(1003))
    assert len(first) == len(s) == 126
    assert list(EpochBatches(1003, 8, seed=3, lengths=lengths, window=window)) == first
    s.set_epoch(1)
    assert list(s) != first


def test_bucketing_cuts_padding_and_keeps_batches_random():
    lengths = _lengths()
    plain = list(EpochBatches(1000, 8, seed=0, lengths=lengths, window=1))
    bucketed = list(EpochBatches(1000, 8, seed=0, lengths=lengths, window=32))
    before, after = padding_fraction(lengths, plain), padding_fraction(lengths, bucketed)
    assert before > 0.25 and after < 0.05
    # The order of batches is shuffled: batch lengths are not sorted across the epoch.
    means = [lengths[b].mean() for b in bucketed]
    assert means != sorted(means)
    # Rows still come from the whole split, not a fixed length-sorted order.
    assert bucketed != list(EpochBatches(1000, 8, seed=1, lengths=lengths, window=32))


def test_drop_last_and_bad_lengths():
    s = EpochBatches(20, 8, seed=0, drop_last=True, lengths=_lengths(20), window=4)
    assert [len(b) for b in s] == [8, 8] and len(s) == 2
    with pytest.raises(ValueError, match="lengths has 5 entries for 20 rows"):
        EpochBatches(20, 8, seed=0, lengths=[1] * 5, window=4)


def test_padding_fraction_by_hand():
    assert padding_fraction([2, 4, 4, 4], [[0, 1], [2, 3]]) == pytest.approx(1 - 14 / 16)
