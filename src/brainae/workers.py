"""Process pools for ``--workers``: workers that die with their parent, and errors that cross back intact.

Every command that runs volumes in several processes (``prepare``, ``evaluate``, ``denoise`` / ``inpaint`` /
``anomaly`` on a folder) takes its pool from :func:`process_pool`:

- **Workers die with their parent**, whatever ends it (SIGKILL included): on Linux each worker asks the kernel
  for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere a watchdog thread in the worker
  exits when its parent process id changes (the parent is gone). No worker is left behind, orphaned, blocked
  on a pipe.
- **Errors cross the process boundary intact**: a worker's exception is sent back as it is when it pickles
  (brainae's errors do, :class:`~brainae.errors.BrainaeError`), else as a :class:`RuntimeError` holding its
  type and message; the pool never breaks on an error it cannot send back.
- **A worker that dies** (killed, out of memory) gives one :class:`~brainae.errors.BrainaeError`, not
  ``BrokenProcessPool``.
- Workers ignore Ctrl-C (the parent handles it and stops them), so an interrupt prints one line, not one
  traceback per worker.

Example:
    >>> with process_pool(2) as pool:  # doctest: +SKIP
    ...     list(pool.map(abs, [-1, -2]))
    [1, 2]
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from brainae.errors import BrainaeError

__all__ = ["WATCH_EVERY_S", "die_with_parent", "portable_error", "process_pool"]

WATCH_EVERY_S = 0.5
"""How often a worker's watchdog checks that its parent is alive (seconds)."""

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Make this process end when the process ``parent`` ends (call it first thing in a worker).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills the worker the moment its parent dies;
    everywhere: a daemon thread that exits the process once ``os.getppid()`` is no longer ``parent``.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc (unusual builds): the watchdog still works
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="brainae-parent-watch", daemon=True).start()


def _init(parent: int, threads: int | None, initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    if initializer is not None:
        initializer(*initargs)


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` when it pickles back to the same type and message, else a :class:`RuntimeError` (or, for a
    brainae error, a plain :class:`~brainae.errors.BrainaeError`) carrying its message."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:  # noqa: S110 - anything that does not round-trip is replaced below
        pass
    if isinstance(exc, BrainaeError):
        return BrainaeError(str(exc))
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def _call(func: Callable, args: tuple, kwargs: dict) -> Any:
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        raise portable_error(exc) from None


class _Pool(ProcessPoolExecutor):
    """A :class:`ProcessPoolExecutor` whose tasks send back errors that pickle (see :func:`portable_error`)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any):  # type: ignore[override]
        return super().submit(_call, fn, args, kwargs)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.kill()


@contextlib.contextmanager
def process_pool(
    workers: int,
    *,
    threads: int | None = None,
    initializer: Callable | None = None,
    initargs: tuple = (),
) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` processes (fork where available) for the duration of the ``with`` block.

    Args:
        workers: number of processes.
        threads: torch threads per worker (None: leave torch's default).
        initializer, initargs: run in each worker after it is set up.

    Raises:
        BrainaeError: a worker process died (killed, out of memory).
    """
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = _Pool(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init,
        initargs=(os.getpid(), threads, initializer, initargs),
    )
    ok = False
    try:
        yield pool
        ok = True
    except BrokenProcessPool:
        raise BrainaeError(
            "a worker process died (killed, or out of memory); nothing was written: run again, with fewer "
            "--workers (or --workers 1)"
        ) from None
    finally:
        if not ok:
            _kill_workers(pool)  # an error or an interrupt: do not wait for the other volumes
        pool.shutdown(wait=True, cancel_futures=True)
