"""Exact kNN backends across sizes (the measurements behind knn(backend="auto"))."""

import pytest
import torch

import graphprop as gp

SIZES = [  # (N, D, k)
    (2940, 768, 400),  # the LPOSS patch graph
    (2940, 768, 16),
    (20000, 3, 16),
    (20000, 64, 16),
]


def _keops_ok() -> bool:
    try:
        import pykeops.torch  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.parametrize("backend", ["torch", "keops"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"N{s[0]}-D{s[1]}-k{s[2]}")
def test_knn_backend(benchmark, size, backend):
    if backend == "keops" and not _keops_ok():
        pytest.skip("pykeops is not usable here")
    n, d, k = size
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)
    gp.knn(x[:64], min(k, 64), metric="ip", backend=backend)  # compile (KeOps) outside the timing
    benchmark.pedantic(gp.knn, args=(x, k), kwargs=dict(metric="ip", backend=backend), rounds=2, iterations=1,
                       warmup_rounds=1)
    benchmark.extra_info["auto_picks"] = gp.select_knn_backend(n, n, d, k, x.device)
