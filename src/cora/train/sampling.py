"""Deterministic batch orders: the same seed gives the same batches, and a resumed run can skip
exactly the batches it already saw."""

from __future__ import annotations

import torch


class EpochBatches(torch.utils.data.Sampler):
    """Shuffled batches of row indices; epoch ``e`` uses the permutation of ``seed + e``.

    With ``lengths`` and ``window > 1`` (length bucketing), each run of ``window * batch_size``
    shuffled rows is sorted by length before it is cut into batches, and the batches of the epoch
    are then shuffled: a batch holds prompts of similar length (little padding) while the rows
    and the order of batches stay random.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False,
                 lengths=None, window: int = 1):
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} rows")
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self.window = window
        self.epoch = 0

    def _batches(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        bucketed = self.shuffle and self.lengths is not None and self.window > 1
        if bucketed:
            span = self.window * self.batch_size
            parts = []
            for start in range(0, self.n, span):
                chunk = order[start:start + span]
                parts.append(chunk[torch.argsort(self.lengths[chunk], stable=True)])
            order = torch.cat(parts)
        order = order.tolist()
        batches = [order[s:s + self.batch_size] for s in range(0, self.n, self.batch_size)]
        if bucketed:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        if self.drop_last:  # after the shuffle, so dropping changes nothing else in the order
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


def padding_fraction(lengths, batches: list[list[int]]) -> float:
    """Share of the token slots in padded batches that are padding."""
    lengths = torch.as_tensor(lengths)
    total = real = 0
    for rows in batches:
        ls = lengths[rows]
        total += int(ls.max()) * len(rows)
        real += int(ls.sum())
    return 1.0 - real / max(total, 1)
