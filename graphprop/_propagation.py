"""Label propagation: solve ``(I - alpha * W_hat) Z = Y`` on any graph form.

``W_hat`` is the symmetric normalisation ``D^-1/2 W D^-1/2`` of W without self-loops
(Zhou et al., "Learning with local and global consistency", 2004). Three solvers:

- ``"cg"``: conjugate gradient for all columns at once, one sparse-times-dense
  product per iteration, per-column step sizes and per-column stopping
  (``||r_c|| <= tol * ||y_c||`` from Z = 0): one CG per column, batched.
- ``"fixed_point"``: the Zhou et al. / PyG ``LabelPropagation`` iteration
  ``F <- alpha W_hat F + (1 - alpha) Y`` from ``F = Y`` on PyG message passing;
  ``F / (1 - alpha)`` converges to the same Z and is what is returned.
- ``"direct"``: a dense solve, for small graphs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Union, overload

import torch
from torch import Tensor

from ._graph import Graph, remove_self_loops, sym_normalize
from ._grid import GridGraph
from ._stencil import flush_denormals
from ._validation import finite_nonnegative, check_choice, check_positive_int, check_range, check_same_device, check_tensor

__all__ = ["label_propagation", "PropagationResult", "ConvergenceWarning", "GraphLike"]

SOLVERS = ("cg", "fixed_point", "direct")
GraphLike = Union[Graph, GridGraph, Tensor]

# Largest graph the dense solver accepts: an (N, N) float64 matrix of 2 GiB.
DIRECT_MAX_NODES = 16_384


class ConvergenceWarning(UserWarning):
    """Some columns stopped at ``max_iter`` before reaching ``tol``."""


@dataclass(frozen=True)
class PropagationResult:
    """What :func:`label_propagation` did, with ``return_info=True``.

    Attributes:
        z: (N, E) the solution (same shape, dtype and device as ``y``).
        iterations: (E,) int64, iterations run for each column (0 for ``"direct"``
            and for all-zero columns).
        residual: (E,) relative residual ``||r_c|| / ||y_c||`` when the column
            stopped (0 for an all-zero column). For ``"fixed_point"``, the residual
            of the iterate before the last one (an upper bound for the last).
        converged: (E,) bool, ``residual <= tol``.
        solver: the solver used.
    """

    z: Tensor
    iterations: Tensor
    residual: Tensor
    converged: Tensor
    solver: str

    @property
    def max_iterations(self) -> int:
        """The most iterations any column ran."""
        return int(self.iterations.max()) if self.iterations.numel() else 0


@overload
def label_propagation(
    graph: GraphLike, y: Tensor, *, alpha: float = ..., tol: float = ..., max_iter: int = ...,
    solver: str = ..., normalize: bool = ..., return_info: Literal[False] = ..., warn: bool = ...,
) -> Tensor: ...
@overload
def label_propagation(
    graph: GraphLike, y: Tensor, *, alpha: float = ..., tol: float = ..., max_iter: int = ...,
    solver: str = ..., normalize: bool = ..., return_info: Literal[True], warn: bool = ...,
) -> PropagationResult: ...


def label_propagation(
    graph: GraphLike,
    y: Tensor,
    *,
    alpha: float = 0.95,
    tol: float = 1e-6,
    max_iter: int = 10,
    solver: str = "cg",
    normalize: bool = True,
    return_info: bool = False,
    warn: bool = False,
) -> Tensor | PropagationResult:
    """Solve ``(I - alpha * W_hat) Z = Y``: spread the label scores Y over the graph.

    Args:
        graph: the weights W, non-negative: a :class:`Graph`, a torch sparse (N, N)
            tensor (COO/CSR/CSC) or a :class:`GridGraph` (applied as a stencil).
            ``"cg"`` needs W symmetric.
        y: (N, E) or (N,) float32/float64 initial scores, one column per label.
        alpha: in (0, 1), how far labels spread (published LPOSS: 0.95).
        tol: per-column relative residual at which a column stops.
        max_iter: iterations at most, per column (published LPOSS: 10).
        solver: ``"cg"``, ``"fixed_point"`` or ``"direct"`` (see module doc).
        normalize: when True (default) W_hat is ``D^-1/2 W D^-1/2`` of W without
            self-loops (zero degree counts as 1); when False the graph is used as
            W_hat as given.
        return_info: return a :class:`PropagationResult` instead of Z.
        warn: emit a :class:`ConvergenceWarning` when a column stopped at
            ``max_iter`` before reaching ``tol`` (off: the published setting stops at
            10 iterations by design).

    Returns:
        Z, shaped like ``y``, in y's dtype and on its device (or a
        :class:`PropagationResult`).

    Raises:
        TypeError / ValueError naming the argument: a graph of another type, shapes
        that do not match, negative weights, an empty graph, NaN/inf, a
        non-symmetric W for ``"cg"``, devices that differ.
    """
    graph = _check_graph(graph)
    y = check_tensor("y", y, floating=True, finite=True)
    if y.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"y must be float32 or float64, got {y.dtype}")
    if y.dim() not in (1, 2):
        raise ValueError(f"y must have shape (N, E) or (N,), got {tuple(y.shape)}")
    if y.size(0) != graph.num_nodes:
        raise ValueError(
            f"y must have one row per node: graph has N={graph.num_nodes} nodes, "
            f"y has shape {tuple(y.shape)}"
        )
    check_same_device(graph=graph.weights if isinstance(graph, GridGraph) else graph.edge_weight, y=y)
    alpha = check_range("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    tol = check_range("tol", tol, low=0.0)
    max_iter = check_positive_int("max_iter", max_iter)
    solver = check_choice("solver", solver, SOLVERS)
    if solver == "direct" and graph.num_nodes > DIRECT_MAX_NODES:
        raise ValueError(
            f"solver='direct' builds a dense (N, N) matrix and is limited to "
            f"N <= {DIRECT_MAX_NODES} nodes, got N={graph.num_nodes}; use solver='cg'"
        )
    if solver == "cg" and not _is_symmetric(graph):
        raise ValueError("graph must be symmetric (W == W^T) for solver='cg'; "
                         "use graphprop.symmetrize(graph) or solver='fixed_point'")

    y2 = y.unsqueeze(1) if y.dim() == 1 else y
    operator = _operator(graph, normalize, y.dtype)
    if solver == "cg":
        z, iters, resid = _solve_cg(operator, y2, alpha, tol, max_iter)
    elif solver == "fixed_point":
        z, iters, resid = _solve_fixed_point(operator, y2, alpha, tol, max_iter)
    else:
        z, iters, resid = _solve_direct(operator, y2, alpha)
    converged = resid <= tol
    if warn and not bool(converged.all()):
        bad = int((~converged).sum())
        warnings.warn(
            f"label_propagation: {bad} of {converged.numel()} columns stopped at "
            f"max_iter={max_iter} above tol={tol:g} (largest relative residual "
            f"{float(resid.max()):.3g})",
            ConvergenceWarning,
            stacklevel=2,
        )
    z = z.squeeze(1) if y.dim() == 1 else z
    if not return_info:
        return z
    return PropagationResult(z, iters, resid, converged, solver)


# --------------------------------------------------------------------- graphs
Operator = Callable[..., Tensor]  # (z (N, E), out=None) -> W_hat @ z


def _check_graph(graph: object) -> Graph | GridGraph:
    if isinstance(graph, Tensor):
        if graph.layout == torch.strided:
            raise TypeError(
                "graph must be a graphprop.Graph, a GridGraph or a torch *sparse* (N, N) "
                "tensor; for a dense matrix use graphprop.Graph.from_dense"
            )
        graph = Graph.from_sparse(graph)
    if not isinstance(graph, (Graph, GridGraph)):
        raise TypeError(
            f"graph must be a graphprop.Graph, a GridGraph or a torch sparse (N, N) tensor, "
            f"got {type(graph).__name__}"
        )
    if graph.num_nodes == 0:
        raise ValueError("graph is empty (0 nodes)")
    weights = graph.weights if isinstance(graph, GridGraph) else graph.edge_weight
    finite, nonnegative = finite_nonnegative(weights)
    if not finite:
        raise ValueError("graph has NaN or infinite edge weights")
    if not nonnegative:
        raise ValueError("graph has negative edge weights; label propagation needs W >= 0")
    return graph


def _is_symmetric(graph: Graph | GridGraph) -> bool:
    """W == W^T up to float rounding. Grid graphs: compared offset by offset. Graphs:
    a randomised test in O(E) without sorting: for fixed random vectors a, b,
    ``a.(W b) == b.(W a)`` holds for a symmetric W and fails (with probability 1)
    when W != W^T beyond relative 1e-6."""
    if isinstance(graph, GridGraph):  # exactly mirrored weights (as built): no pass over them
        return graph.is_mirrored or _grid_is_symmetric(graph.materialize())
    gen = torch.Generator().manual_seed(0)
    ab = torch.rand(graph.num_nodes, 2, generator=gen, dtype=torch.float64).to(graph.device) + 0.5
    i, j = graph.edge_index
    w = graph.edge_weight.double()
    # sum_e w_e a_i b_j  and  sum_e w_e b_i a_j
    forward = (w * ab[i, 0] * ab[j, 1]).sum()
    backward = (w * ab[i, 1] * ab[j, 0]).sum()
    scale = (w.abs() * ab[i, 0] * ab[j, 1]).sum()
    return bool((forward - backward).abs() <= 1e-6 * scale)


def _grid_is_symmetric(grid: GridGraph) -> bool:
    """``weights[o, p] == weights[opposite(o), p + o]`` for every offset, compared slice
    by slice (no copy of the weights)."""
    from ._grid import offset_blocks

    k = len(grid.offsets)
    tol = 1e-6 * float(grid.weights.abs().max()) if grid.weights.numel() else 0.0
    for o, p, q in offset_blocks(grid.offsets[: k // 2], grid.height, grid.width):
        if float((grid.weights[o][p] - grid.weights[k - 1 - o][q]).abs().max()) > tol:
            return False
    return True


def _operator(graph: Graph | GridGraph, normalize: bool, dtype: torch.dtype) -> Operator:
    """``z -> W_hat @ z`` for (N, E) z, in ``dtype``."""
    if isinstance(graph, GridGraph):
        return (sym_normalize(graph) if normalize else graph).operator(dtype)
    g = graph.to(dtype=dtype)
    if normalize:
        g = sym_normalize(remove_self_loops(g))
    from ._message_passing import WeightedSum

    return WeightedSum(g)


# -------------------------------------------------------------------- solvers
def _solve_cg(
    w_hat: Operator, y: Tensor, alpha: float, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched CG on ``A = I - alpha W_hat``, one CG per column: per-column step sizes
    ``rho / <p, A p>`` and directions ``beta = rho / rho_prev``; a column that meets
    ``||r_c|| <= tol * ||y_c||`` is frozen (its step becomes 0), so every column
    follows exactly its own CG. State arrays are padded with all-zero (frozen)
    columns to the operator's preferred column multiple and updated in place."""
    n, e = y.shape
    multiple = getattr(w_hat, "column_multiple", 1)
    width = -(-e // multiple) * multiple
    r = y.new_zeros(n, width)
    r[:, :e] = y
    if r.device.type == "cpu":  # no denormal operand in the products (slow on some CPUs)
        flush_denormals(r)
    x = torch.zeros_like(r)
    q = torch.empty_like(r)
    ops = _vector_ops(r)
    # q = A p and p . q: fused in one pass when the operator offers it
    shifted_dot = getattr(w_hat, "shifted_dot", None)
    wp = torch.empty_like(r) if shifted_dot is None else None
    ynorm = r.norm(dim=0)
    atol = tol * ynorm
    iters = torch.zeros(width, dtype=torch.long, device=y.device)
    rho = ops.dot(r, r)
    active = rho.sqrt() > atol
    p = r.clone()
    rho_prev = rho
    for it in range(max_iter):
        if not bool(active.any()):
            break
        if it > 0:
            ops.direction(p, r, torch.where(active, rho / rho_prev, 0))
        if shifted_dot is not None:
            pq = shifted_dot(p, alpha, q)
        else:
            ops.shifted(p, w_hat(p, out=wp), alpha, q)  # q = A p
            pq = ops.dot(p, q)
        step = torch.where(active, rho / pq, 0)
        rho_prev = rho
        rho = ops.step(x, r, p, q, step)
        iters += active
        active &= rho.sqrt() > atol
    return x[:, :e].contiguous(), iters[:e], _relative(rho.sqrt(), ynorm)[:e]


class _TorchVectorOps:
    """The CG's vector updates in plain torch (any device)."""

    @staticmethod
    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(0)

    @staticmethod
    def step(x: Tensor, r: Tensor, p: Tensor, q: Tensor, step: Tensor) -> Tensor:
        x.addcmul_(p, step)
        r.addcmul_(q, step, value=-1)
        return (r * r).sum(0)

    @staticmethod
    def direction(p: Tensor, r: Tensor, beta: Tensor) -> None:
        p.mul_(beta).add_(r)

    @staticmethod
    def shifted(p: Tensor, wp: Tensor, alpha: float, out: Tensor) -> None:
        torch.add(p, wp, alpha=-alpha, out=out)


class _NumbaVectorOps:
    """The same updates as compiled single-pass CPU loops: no (N, E) temporaries; the
    entries of r and p below the dtype's smallest normal number are flushed to 0 (no
    denormal operand reaches the next product)."""

    @staticmethod
    def dot(a: Tensor, b: Tensor) -> Tensor:
        from . import _numba_kernels as k

        return torch.from_numpy(k.column_dot(a.numpy(), b.numpy()))

    @staticmethod
    def step(x: Tensor, r: Tensor, p: Tensor, q: Tensor, step: Tensor) -> Tensor:
        from . import _numba_kernels as k

        tiny = torch.finfo(x.dtype).tiny
        return torch.from_numpy(k.cg_step(x.numpy(), r.numpy(), p.numpy(), q.numpy(), step.numpy(), tiny))

    @staticmethod
    def direction(p: Tensor, r: Tensor, beta: Tensor) -> None:
        from . import _numba_kernels as k

        k.cg_direction(p.numpy(), r.numpy(), beta.numpy(), torch.finfo(p.dtype).tiny)

    @staticmethod
    def shifted(p: Tensor, wp: Tensor, alpha: float, out: Tensor) -> None:
        from . import _numba_kernels as k

        k.shifted_system(p.numpy(), wp.numpy(), alpha, out.numpy())


def _vector_ops(t: Tensor) -> type[_TorchVectorOps] | type[_NumbaVectorOps]:
    from ._stencil import numba_available

    if t.device.type == "cpu" and t.is_contiguous() and numba_available():
        return _NumbaVectorOps
    return _TorchVectorOps


def _solve_fixed_point(
    w_hat: Operator, y: Tensor, alpha: float, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor]:
    """PyG ``LabelPropagation`` (no clamping, no mask): ``F <- alpha W_hat F + (1 - alpha) Y``
    from ``F = Y``; returns ``F / (1 - alpha)``. ``(F_{t+1} - F_t) / (1 - alpha)`` is the
    residual of ``F_t / (1 - alpha)``, the per-column stopping quantity."""
    n, e = y.shape
    out = torch.zeros_like(y)
    iters = torch.zeros(e, dtype=torch.long, device=y.device)
    resid = torch.zeros(e, dtype=y.dtype, device=y.device)
    ynorm = y.norm(dim=0)
    atol = tol * ynorm
    cols = torch.arange(e, device=y.device)
    f = y.clone()
    res = (1 - alpha) * y
    for _ in range(max_iter):
        f_next = w_hat(f).mul_(alpha).add_(res)
        rnorm = (f_next - f).norm(dim=0) / (1 - alpha)
        f = f_next
        iters[cols] += 1
        resid[cols] = rnorm
        done = rnorm <= atol[cols]
        if bool(done.any()):
            out[:, cols[done]] = f[:, done]
            cols, f, res = cols[~done], f[:, ~done], res[:, ~done]
        if cols.numel() == 0:
            break
    out[:, cols] = f
    return out / (1 - alpha), iters, _relative(resid, ynorm)


def _solve_direct(w_hat: Operator, y: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Dense ``torch.linalg.solve(I - alpha W_hat, Y)``; W_hat assembled column by column
    from the operator so every graph form is solved the same way."""
    n, e = y.shape
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    a = eye - alpha * w_hat(eye)
    z = torch.linalg.solve(a, y)
    resid = (y - a @ z).norm(dim=0)
    iters = torch.zeros(e, dtype=torch.long, device=y.device)
    return z, iters, _relative(resid, y.norm(dim=0))


def _relative(resid: Tensor, ynorm: Tensor) -> Tensor:
    return torch.where(ynorm > 0, resid / torch.where(ynorm > 0, ynorm, 1), torch.zeros_like(resid))
