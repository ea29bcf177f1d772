"""graphprop._blas.inner_products: q @ x.T as single-threaded BLAS calls side by side, the Gram
matrix by mirrored tiles; against float64 numpy, on every path (pool, one worker, no BLAS to
limit), and the BLAS thread count restored afterwards."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from graphprop import _blas


def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


@pytest.mark.parametrize("n, d", [(700, 33), (1537, 64), (5, 3)])  # tiles of uneven sizes; one call
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_matrix_is_exactly_symmetric_and_equals_the_product(n, d, dtype):
    x = np.random.default_rng(n).standard_normal((n, d)).astype(dtype)
    before = _blas_threads()
    out = _blas.inner_products(x, x, gram=True)
    assert _blas_threads() == before
    assert out.dtype == dtype and out.shape == (n, n)
    assert np.array_equal(out, out.T)
    ref = x.astype(np.float64) @ x.astype(np.float64).T
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * d)


@pytest.mark.parametrize("m", [1, 600, 2001])
def test_queries_against_points(m):
    rng = np.random.default_rng(m)
    q, x = rng.standard_normal((m, 20)).astype(np.float32), rng.standard_normal((900, 20)).astype(np.float32)
    np.testing.assert_allclose(_blas.inner_products(q, x), q.astype(np.float64) @ x.T.astype(np.float64),
                               rtol=1e-5, atol=1e-5)


def test_one_worker_and_no_blas_to_limit_take_one_numpy_call(monkeypatch):
    x = np.random.default_rng(0).standard_normal((800, 16))
    ref = x @ x.T
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert _blas._workers() == 1
    one = _blas.inner_products(x, x, gram=True)
    assert np.array_equal(one, one.T)
    np.testing.assert_allclose(one, ref, rtol=1e-12)
    monkeypatch.undo()
    monkeypatch.setattr(_blas, "_pool_and_controller", lambda workers: None)
    np.testing.assert_allclose(_blas.inner_products(x[:500], x), ref[:500], rtol=1e-12)


def test_mirrored_copies_the_upper_triangle_down():
    a = np.random.default_rng(1).random((150, 150))  # past one _MIRROR_ROWS chunk
    m = _blas._mirrored(a.copy())
    assert np.array_equal(m, m.T) and np.array_equal(np.triu(m), np.triu(a))


def test_gram_needs_matching_shapes():
    with pytest.raises(ValueError, match="gram=True"):
        _blas.inner_products(np.ones((3, 2)), np.ones((4, 2)), gram=True)


def test_concurrent_callers_leave_the_blas_thread_count_as_it_was():
    """Overlapping calls from several threads (a served demo) run one limited section at a
    time: the BLAS is back at its thread count afterwards, and every result is right."""
    import threading

    x = np.random.default_rng(2).standard_normal((900, 24))
    ref = x @ x.T
    before = _blas_threads()
    results = []
    threads = [threading.Thread(target=lambda: results.append(_blas.inner_products(x, x, gram=True)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _blas_threads() == before and len(results) == 4
    for out in results:
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def _gram_in_child(x):
    return float(np.abs(_blas.inner_products(x, x, gram=True) - x @ x.T).max())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_a_pool_of_its_own():
    """After the parent has used its pool, a forked child (a fork-started worker) computes
    with threads of its own instead of waiting for the parent's, which it does not have."""
    import multiprocessing

    x = np.random.default_rng(3).standard_normal((700, 16))
    _blas.inner_products(x, x, gram=True)  # the parent's pool exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_gram_in_child, (x,)).get(timeout=120) < 1e-9
