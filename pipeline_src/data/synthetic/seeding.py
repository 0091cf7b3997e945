"""One random generator per image (or per motion sequence), derived from (seed, kind, split, index).

Nothing depends on which worker renders an item or in which order, so a parallel run writes the same
bytes as a serial one. Names are hashed with SHA-256 (Python's hash() changes between processes).
"""
from __future__ import annotations

import hashlib

import numpy as np


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def item_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError(f"seed {seed} and index {index} must be non-negative integers")
    entropy = [int(seed), _stable_int(kind), _stable_int(split), int(index)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
