"""Where the training batches come from: seeded index batches, and the images they index.

Two ways to hold a split, with the same batches in the same order (a run gives the same numbers either way):

- :class:`InMemorySplit`: the whole split copied once into one tensor on the training device; a batch is a
  gather by index there (no DataLoader, no per-sample Python). The fast path when the split fits.
- :class:`StreamedSplit`: rows read batch by batch from the prepared ``slices.npy`` with positioned reads
  (only the batch is in memory; nothing of the file stays mapped in the process), one batch read ahead in a
  background thread and copied to the device (pinned, non-blocking on CUDA). For splits larger than the
  device's memory.

:func:`choose_data_mode` picks one (``auto``: memory when train + val fit the memory budget) and says why.
Augmentation happens on the device in both cases (:meth:`brainae.train.AutoencoderModule.corrupt`).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from brainae.errors import BrainaeError

__all__ = [
    "IndexBatches",
    "InMemorySplit",
    "SliceReader",
    "StreamedSplit",
    "as_split",
    "choose_data_mode",
    "derived_seed",
    "shard_batches",
]


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (seed, epoch, rank, stream); stable across platforms."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def shard_batches(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    max_steps: int | None = None,
) -> list[Tensor]:
    """Index batches of one epoch for one rank: a seeded permutation of ``range(n)``, this rank's share.

    Every rank computes the same permutation (CPU generator seeded from ``(seed, epoch)``) and uses its
    first ``world * (n // world)`` indices (the remainder sits out this epoch, as a distributed sampler with
    ``drop_last`` does). Step ``k`` of the run is the global batch ``perm[k*G:(k+1)*G]`` with
    ``G = world * batch_size``, and rank ``r`` takes the ``r``-th of its ``world`` equal parts: the ranks'
    shards are disjoint, and ``world`` ranks of batch ``B`` see, step by step, the images that one process of
    batch ``world * B`` sees. The last batch may be smaller.

    Returns:
        List of int64 CPU tensors; concatenated they are this rank's shard, each index once.

    Example:
        >>> [b.tolist() for b in shard_batches(8, 2, seed=0, epoch=0, rank=1, world=2)] != []
        True
    """
    g = torch.Generator().manual_seed(derived_seed(seed, epoch, 0))
    perm = torch.randperm(n, generator=g)
    per_rank = n // world if world > 1 else n
    used = perm[: per_rank * world]
    steps = math.ceil(per_rank / batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    glob = world * batch_size
    batches = []
    for k in range(steps):
        chunk = used[k * glob : (k + 1) * glob]
        part = len(chunk) // world
        batches.append(chunk[rank * part : (rank + 1) * part])
    return [b for b in batches if len(b)]


# --------------------------------------------------------------------------------------------- splits


class InMemorySplit:
    """A split held as one N x 1 x H x W float32 tensor on the training device (copied there once)."""

    mode = "memory"

    def __init__(self, images: np.ndarray | Tensor) -> None:
        self._cpu = torch.as_tensor(np.asarray(images, dtype=np.float32))
        self._on_device: Tensor | None = None

    def __len__(self) -> int:
        return len(self._cpu)

    @property
    def nbytes(self) -> int:
        return int(self._cpu.numel() * 4)

    def index_device(self, device: torch.device) -> torch.device:
        """Where the index batches should live: on the device, next to the images."""
        return device

    def images(self, device: torch.device) -> Tensor:
        """The whole split on ``device`` (N x 1 x H x W), copied on first use."""
        if self._on_device is None or self._on_device.device != device:
            self._on_device = self._cpu.to(device).unsqueeze(1)
        return self._on_device

    def batches(self, index_batches: Iterable[Tensor], device: torch.device) -> Iterator[Tensor]:
        """The images of each index batch, gathered on the device."""
        data = self.images(device)
        for idx in index_batches:
            yield data[idx]

    def ranges(self, bounds: Iterable[tuple[int, int]], device: torch.device) -> Iterator[Tensor]:
        """The images ``[start, stop)`` of each range, on the device."""
        data = self.images(device)
        for start, stop in bounds:
            yield data[start:stop]


class SliceReader:
    """Reads rows of a ``.npy`` stack (N x H x W) with positioned reads, as float32 arrays.

    Rows are read in file order (runs of consecutive rows in one call) and returned in the order asked for.
    The file is opened per process (safe after ``fork`` / in DDP workers) and nothing stays mapped.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with self.path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran or len(shape) != 3:
            raise BrainaeError(f"{self.path}: expected a C-ordered N x H x W array, found shape {shape}")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        fd, done = self._file(), 0
        while done < len(buffer):
            n = os.preadv(fd, [buffer[done:]], offset + done)
            if n <= 0:
                raise BrainaeError(f"{self.path}: file ends early (truncated?); re-run `brainae prepare`")
            done += n

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (any order, no repeats needed) as a len(rows) x H x W float32 array."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        raw = np.empty((len(rows), *self.shape[1:]), self.dtype)
        view = memoryview(raw.reshape(-1).view(np.uint8))
        starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)
        for i, j in zip(starts, [*starts[1:], len(ordered)]):
            lo, hi = i * self.row_bytes, j * self.row_bytes
            self._read_into(view[lo:hi], self.offset + int(ordered[i]) * self.row_bytes)
        result = out if out is not None else np.empty((len(rows), *self.shape[1:]), np.float32)
        result[order] = raw
        return result


class StreamedSplit:
    """A split read batch by batch from ``slices.npy``; one batch read ahead, then copied to the device."""

    mode = "stream"

    def __init__(self, path: str | os.PathLike, rows: np.ndarray) -> None:
        self.reader = SliceReader(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.reader.shape[1] * self.reader.shape[2] * 4

    def index_device(self, device: torch.device) -> torch.device:
        """Index batches stay on the CPU: they address the file."""
        return torch.device("cpu")

    def _load(self, positions: np.ndarray, device: torch.device) -> Tensor:
        with self._lock:
            array = self.reader.read(self.rows[positions])
        batch = torch.from_numpy(array).unsqueeze(1)
        if device.type == "cuda":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)

    def _stream(self, parts: list[np.ndarray], device: torch.device) -> Iterator[Tensor]:
        if not parts:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="brainae-read") as pool:
            pending = pool.submit(self._load, parts[0], device)
            for nxt in [*parts[1:], None]:
                batch = pending.result()
                if nxt is not None:
                    pending = pool.submit(self._load, nxt, device)
                yield batch

    def batches(self, index_batches: Iterable[Tensor], device: torch.device) -> Iterator[Tensor]:
        """The images of each index batch (positions in this split), read ahead by one batch."""
        return self._stream([np.asarray(idx.cpu(), dtype=np.int64) for idx in index_batches], device)

    def ranges(self, bounds: Iterable[tuple[int, int]], device: torch.device) -> Iterator[Tensor]:
        """The images ``[start, stop)`` of each range, read ahead by one range."""
        return self._stream([np.arange(start, stop) for start, stop in bounds], device)


def as_split(images: Any) -> InMemorySplit | StreamedSplit:
    """A split object from an array / tensor (held in memory) or an existing split object."""
    if isinstance(images, (InMemorySplit, StreamedSplit)):
        return images
    return InMemorySplit(images)


# ---------------------------------------------------------------------------------------- the choice


def _available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: free device memory; CPU: MemAvailable), None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return int(pages * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _size(nbytes: int) -> str:
    """``"3.10 GiB"``, ``"64.0 MiB"``."""
    if nbytes >= 1024**3:
        return f"{nbytes / 1024**3:.2f} GiB"
    return f"{nbytes / 1024**2:.1f} MiB"


def choose_data_mode(
    mode: str, nbytes: int, device: torch.device, memory_limit: int | None = None
) -> tuple[str, str]:
    """``("memory" | "stream", reason)`` for a training split of ``nbytes`` bytes (train + val, float32).

    ``mode`` ``"memory"`` or ``"stream"`` is taken as asked. ``"auto"`` streams when the data exceed the
    budget: ``memory_limit`` bytes when given, else half of the device's free memory.

    Example:
        >>> choose_data_mode("auto", 4 << 30, torch.device("cpu"), memory_limit=1 << 30)[0]
        'stream'
    """
    if mode in ("memory", "stream"):
        return mode, f"--data {mode} asked for ({_size(nbytes)} of slices)"
    if memory_limit is not None:
        budget, source = int(memory_limit), "the memory limit"
    else:
        free = _available_memory(device)
        if free is None:
            return "memory", f"{_size(nbytes)} of slices; free memory unknown, so held in memory"
        budget, source = free // 2, f"half of the free {device.type} memory"
    chosen = "memory" if nbytes <= budget else "stream"
    relation = "fit in" if chosen == "memory" else "exceed"
    return chosen, f"{_size(nbytes)} of slices {relation} {source} ({_size(budget)})"


# ---------------------------------------------------------------------------------------- Lightning


class IndexBatches:
    """The sized iterable Lightning iterates: each item is a batch of images already on the device.

    ``split="train"``: the module's :meth:`~brainae.train.AutoencoderModule.train_batches` for its current
    epoch (a fresh permutation per epoch). ``split="val"``: this rank's part of the val split, in order.
    """

    def __init__(self, module: Any, split: str) -> None:
        self.module = module
        self.split = split

    def __len__(self) -> int:
        return self.module.num_steps(self.split)

    def __iter__(self) -> Iterator[Tensor]:
        if self.split == "train":
            return self.module.train_batches(self.module.current_epoch)
        return self.module.val_batches()
