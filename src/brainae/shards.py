"""Split a cohort between the jobs of a cluster: ``--shard K/N`` takes every N-th input, starting at the K-th.

The split depends only on the sorted list of inputs, K and N, so N jobs that each run one K process every
input exactly once, whatever order they run in (a SLURM job array: ``--shard $((SLURM_ARRAY_TASK_ID+1))/N``).

Example:
    >>> take_shard(["a", "b", "c", "d", "e"], parse_shard("2/2"))
    ['b', 'd']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from brainae.errors import BrainaeError

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)``, 1 <= K <= N.

    Raises:
        BrainaeError: not of that form.
    """
    parts = str(text).split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        k = n = 0
    if len(parts) != 2 or not 1 <= k <= n:
        raise BrainaeError(
            f"--shard {text}: give K/N with 1 <= K <= N (job K of N; e.g. 1/4 ... 4/4, or in a SLURM array "
            "--shard $((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT)"
        )
    return k, n


def take_shard(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """The items of shard ``(K, N)`` (every N-th, from the K-th); all of them for None."""
    if shard is None:
        return list(items)
    k, n = shard
    return [x for i, x in enumerate(items) if i % n == k - 1]
