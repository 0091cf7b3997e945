"""A resumable, rank-aware order over the training items (windows, or whole images to crop from).

The order of epoch e is a permutation drawn from (seed, e) alone, so a run restarted at (epoch, batch) sees
exactly the batches the uninterrupted run would have seen. Under DDP each rank takes every world-th batch
of the same permutation (no overlap, same number of batches on every rank).
"""
from __future__ import annotations

import numpy as np

from pipeline_src.config import ConfigError


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches per epoch per rank; an epoch is one pass over the items: the windows (`sampling: windows`)
    or one crop per training image (`sampling: whole_images`)."""
    per = n // (batch_size * world_size)
    if per == 0:
        raise ConfigError(f"{n} training items (windows or whole images) cannot fill one batch of {batch_size} x "
                          f"{world_size} rank(s): lower batch_size, or cut more windows (smaller stride) / add images")
    return per


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                  rank: int = 0, world_size: int = 1):
    """Yield (batch_index, [sample indices]) for this rank, from `start_batch` to the end of the epoch."""
    perm = epoch_permutation(n, seed, epoch)
    per_rank = batches_per_epoch(n, batch_size, world_size)
    for b in range(start_batch, per_rank):
        g = b * world_size + rank  # global batch number
        yield b, perm[g * batch_size:(g + 1) * batch_size].tolist()
