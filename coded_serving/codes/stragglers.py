"""The straggler model of the accuracy benchmark, shared by tuning (validation) and measurement (test).

S of a coded ensemble's N workers are unavailable: with S = 1 each worker in turn; with S >= 2 a few
distinct subsets drawn with a seed that depends only on (N, S), so every code with the same N and S
sees the same ones (and the benchmark can serve them all with one set of unloaded workers).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from .base import Code

Pattern = tuple[int, ...]


def straggler_patterns(num_workers: int, stragglers: int, subsets: int, seed: int) -> tuple[Pattern, ...]:
    """The sets of unavailable workers: every one of them when there are at most ``subsets``."""
    if not 1 <= stragglers < num_workers:
        raise ValueError(f"stragglers must be in [1, {num_workers - 1}], got {stragglers}")
    everything = list(combinations(range(num_workers), stragglers))
    if stragglers == 1 or len(everything) <= subsets:
        return tuple(everything)
    rng = np.random.default_rng([seed, num_workers, stragglers])
    return tuple(everything[i] for i in sorted(rng.choice(len(everything), subsets, replace=False)))


def missing_slots(code: Code, pattern: Pattern) -> np.ndarray:
    """Slots of a coding group whose own original is unavailable: all of them for a non-systematic code
    (no worker computes an original), the unavailable data workers' for a systematic one."""
    if not code.systematic:
        return np.arange(code.k)
    return np.array(sorted(w for w in pattern if w < code.k), dtype=int)


def available_mask(code: Code, pattern: Pattern) -> np.ndarray:
    available = np.ones(code.num_workers, dtype=bool)
    available[list(pattern)] = False
    return available
