"""Inner products on the CPU through numpy's BLAS, as single-threaded calls run side by side.

Why not one threaded call: numpy's OpenBLAS keeps its worker threads spinning for about
0.1 s after each call (its ``THREAD_TIMEOUT``), so the numba kernels that follow share the
cores with them. On the AMD EPYC of ``benchmarks/README.md`` (2 cores) the top-k selection
of the patch stage took 23-29 ms right after numpy's 2,940 x 2,940 x 768 product, 13-14 ms
when run alone. Calls limited to one BLAS thread each (``threadpoolctl``), run in a pool of
Python threads (numpy releases the GIL in them), leave no thread spinning, and are as fast
(66 ms against 66 ms for the two halves of that product).

For a Gram matrix ``X X^T`` only the tiles on and above the diagonal are computed and each
is mirrored, so the result is exactly symmetric (as numpy's own ``syrk`` path gives it): with
2 threads 10 of 16 tiles, the 4 on the diagonal by ``syrk`` at half cost, half the
multiply-adds of the whole product.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

_MIN_ROWS = 256  # rows of the smallest tile worth a call of its own
_MIRROR_ROWS = 64  # rows per strided copy of the mirror
_state: dict[str, Any] = {}
_lock = threading.Lock()  # guards _state
# One limited run at a time: two overlapping ``limit`` contexts would restore each other's
# thread count out of order and leave the BLAS on one thread.
_run_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child has the pool object but none of its threads (and may have copied a
    held lock): start afresh."""
    global _lock, _run_lock
    _state.clear()
    _lock, _run_lock = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _workers() -> int:
    """The threads to use: torch's intra-op thread count, at most the usable cores."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), usable))


def _pool_and_controller(workers: int) -> tuple[ThreadPoolExecutor, Any] | None:
    """A pool of ``workers`` threads and a ``threadpoolctl`` controller of the loaded BLAS,
    made once (None where threadpoolctl finds no BLAS to limit)."""
    with _lock:
        if _state.get("workers") != workers:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController().select(user_api="blas")
            old = _state.get("pool")
            if old is not None:
                old.shutdown(wait=False)
            _state.update(workers=workers, controller=controller if controller.lib_controllers else None,
                          pool=ThreadPoolExecutor(workers, thread_name_prefix="graphprop-blas"))
        if _state["controller"] is None:
            return None
        return _state["pool"], _state["controller"]


def _bounds(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _mirrored(block: np.ndarray) -> np.ndarray:
    """The square ``block`` with its upper triangle copied onto the lower one (numpy's
    ``syrk`` path for ``a @ a.T`` gives that already; made certain here)."""
    n = block.shape[0]
    for a in range(0, n, _MIRROR_ROWS):
        b = min(n, a + _MIRROR_ROWS)
        block[a:b, :a] = block[:a, a:b].T
        corner = block[a:b, a:b]
        lower = np.tril_indices(b - a, -1)
        corner[lower] = corner.T[lower]
    return block


def inner_products(q: np.ndarray, x: np.ndarray, *, gram: bool = False) -> np.ndarray:
    """``q @ x.T``: (M, D), (N, D) -> (M, N) in their common dtype; ``gram=True``: ``q`` holds
    the same rows as ``x``, and the result is exactly symmetric. Run as single-threaded BLAS
    calls on a pool of threads where there are several cores and enough rows, else as one
    numpy call.

    The BLAS is limited to one thread for the whole process while the calls run: another
    thread's numpy product in that time runs on one thread too."""
    if gram and q.shape != x.shape:
        raise ValueError(f"gram=True needs q of x's shape {x.shape}, got {q.shape}")
    workers = _workers()
    ready = _pool_and_controller(workers) if workers > 1 and q.shape[0] >= 2 * _MIN_ROWS else None
    if ready is None:
        return _mirrored(x @ x.T) if gram else q @ x.T
    pool, controller = ready
    out = np.empty((q.shape[0], x.shape[0]), dtype=np.result_type(q, x))

    def rows(a: int, b: int) -> None:
        np.matmul(q[a:b], x.T, out=out[a:b])

    def tile(rows_a: tuple[int, int], rows_b: tuple[int, int]) -> None:
        (a0, a1), (b0, b1) = rows_a, rows_b
        if rows_a == rows_b:
            out[a0:a1, a0:a1] = _mirrored(x[a0:a1] @ x[a0:a1].T)
        else:
            block = np.matmul(x[a0:a1], x[b0:b1].T, out=out[a0:a1, b0:b1])  # BLAS writes in place
            out[b0:b1, a0:a1] = block.T

    with _run_lock, controller.limit(limits=1):
        if gram:
            sides = _bounds(q.shape[0], min(2 * workers, q.shape[0] // _MIN_ROWS))
            jobs = [pool.submit(tile, sides[i], sides[j]) for i in range(len(sides)) for j in range(i, len(sides))]
        else:
            jobs = [pool.submit(rows, a, b) for a, b in _bounds(q.shape[0], workers)]
        for job in jobs:
            job.result()
    return out
