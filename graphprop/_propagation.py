"""Label propagation: solve ``(I - alpha * P) Z = Y`` on any graph form.

Convention (PyG's ``LabelPropagation`` / ``gcn_norm``, exactly): an edge
``edge_index[:, e] = (i, j)`` of weight ``w`` sends a message from ``i`` to ``j``,
so ``P = W_hat^T`` and ``(P z)[j] = sum_i W_hat[i, j] z[i]``. With ``normalize=True``
``W_hat = D^-1/2 W D^-1/2`` of W without self-loops, ``D`` the *in*-degrees
``d_j = sum_i W[i, j]`` (column sums; a node of in-degree 0 sends nothing, as in
``gcn_norm``), computed in float64 and then cast (Zhou et al., "Learning with local and global consistency", 2004).
With ``normalize=False``, ``W_hat = W`` as given. On a symmetric graph
``P = W_hat``, the symmetric normalisation. Solvers:

- ``"cg"``: conjugate gradient for all columns at once, one sparse-times-dense
  product per iteration, per-column step sizes and per-column stopping
  (``||r_c|| <= tol * ||y_c||`` from Z = 0): one CG per column, batched. Needs a
  symmetric W.
- ``"fixed_point"``: the Zhou et al. / PyG ``LabelPropagation`` iteration
  ``F <- alpha P F + (1 - alpha) Y`` from ``F = Y``; ``F / (1 - alpha)`` converges to
  the same Z and is what is returned (PyG returns F: multiply by ``1 - alpha``).
- ``"direct"``: a dense float64 solve, for small graphs.
- ``"auto"`` (default): ``"direct"`` up to :data:`AUTO_DIRECT_MAX_NODES` nodes (the
  exact answer, in well under a second), else ``"cg"`` on symmetric graphs and grid
  graphs, ``"fixed_point"`` on directed ones (:func:`_auto_solver`).

The solvers are a table, :data:`SOLVER_TABLE` (name -> :class:`SolverSpec`: the
function and what it needs), at the end of this module: a new solver is one function
and one entry there (and, if ``"auto"`` should pick it, a line in
:func:`_auto_solver`). Every solver takes the graph through the protocol
(:class:`~graphprop.PropagationGraph`): it only sees the operator
``graph.propagation_operator(dtype, normalize=...)`` (:class:`~graphprop.GraphOperator`).

The mapping of scikit-learn's ``LabelSpreading`` and PyG's ``LabelPropagation``
settings onto these is in ``docs/graphprop.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from ._graph import Graph
from ._grid import GridGraph
from ._protocol import GraphOperator, PropagationGraph, is_propagation_graph
from ._stencil import flush_denormals, numba_available
from ._validation import (
    HALF_FLOATS,
    check_bool,
    check_choice,
    check_positive_int,
    check_range,
    check_same_device,
    check_tensor,
    finite_nonnegative,
)

__all__ = ["label_propagation", "PropagationResult", "ConvergenceWarning", "GraphLike", "SolverSpec"]

# what label_propagation takes: a graph of the protocol (Graph, GridGraph, ...) or a torch sparse tensor
GraphLike = PropagationGraph | Tensor

# Largest graph the dense solver accepts: an (N, N) float64 matrix of 2 GiB.
DIRECT_MAX_NODES = 16_384
# Largest graph "auto" solves densely (exact, where CG's 10 default iterations may not
# be): measured on 2 shared cores of an AMD EPYC (AVX-512) under load (load average
# ~10), 10 columns, 20 edges per node: direct 0.67 s at 1,024 nodes, 2.3 s at 2,048,
# 13 s at 4,096 (O(N^3)); 10 CG iterations 0.1 s. See docs/graphprop.md.
AUTO_DIRECT_MAX_NODES = 2_048


# "cg" warns when more than this share of the rows have all their scores below the
# residual per entry it stopped at (see _warn_unresolved_rows).
UNRESOLVED_ROWS_WARN = 0.01


class ConvergenceWarning(UserWarning):
    """Some columns stopped at ``max_iter`` before reaching ``tol``; or (``"cg"``)
    some rows' scores are all below the residual the solve stopped at; or rows of a
    float64 solution underflow to zero in Z's float32 (``"direct"`` on a float32 graph)."""


@dataclass(frozen=True)
class PropagationResult:
    """What :func:`label_propagation` did, with ``return_info=True``.

    Attributes
    ----------
    z : Tensor
        (N, E) the solution (same shape and device as ``y``; dtype: y's promoted with the
        weights', see :func:`label_propagation`).
    iterations : Tensor
        (E,) int64, iterations run for each column (0 for ``"direct"`` and, for every
        solver, for all-zero columns).
    residual : Tensor
        (E,) relative residual ``||r_c|| / ||y_c||`` when the column stopped (0 for an
        all-zero column): for ``"cg"`` CG's recursive residual, for ``"fixed_point"``
        and ``"direct"`` ``Y - (I - alpha P) Z`` evaluated on the returned Z.
    converged : Tensor
        (E,) bool, ``residual <= tol``.
    solver : str
        The solver used (what ``"auto"`` chose).
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
    solver: str = ..., normalize: bool = ..., return_info: Literal[False] = ..., warn: bool | None = ...,
) -> Tensor: ...
@overload
def label_propagation(
    graph: GraphLike, y: Tensor, *, alpha: float = ..., tol: float = ..., max_iter: int = ...,
    solver: str = ..., normalize: bool = ..., return_info: Literal[True], warn: bool | None = ...,
) -> PropagationResult: ...


def label_propagation(
    graph: GraphLike,
    y: Tensor,
    *,
    alpha: float = 0.95,
    tol: float = 1e-6,
    max_iter: int = 10,
    solver: str = "auto",
    normalize: bool = True,
    return_info: bool = False,
    warn: bool | None = None,
) -> Tensor | PropagationResult:
    """Solve ``(I - alpha * P) Z = Y``: spread the label scores Y over the graph.

    Messages flow along the edges, from ``edge_index[0]`` to ``edge_index[1]``, and
    are normalised by in-degree (PyG's ``LabelPropagation`` and ``gcn_norm``; see the
    module doc). Not differentiable: it runs under ``torch.no_grad()`` and accepts
    inputs that require grad, but Z never does (as PyG's ``LabelPropagation``).

    Parameters
    ----------
    graph : PropagationGraph or Tensor
        The weights W, non-negative: a :class:`Graph`, a torch sparse (N, N) tensor
        (COO/CSR/CSC), a :class:`GridGraph` (applied as a stencil), or any
        :class:`~graphprop.PropagationGraph`. ``"cg"`` needs W symmetric (checked
        exactly, once per :class:`Graph`).
    y : Tensor
        (N, E) or (N,) float32/float64 initial scores, one column per label.
    alpha : float
        In (0, 1), how far labels spread (published LPOSS: 0.95); a Python, numpy or
        0-d tensor number.
    tol : float
        Per-column relative residual ``||Y_c - (I - alpha P) Z_c|| / ||Y_c||``
        (2-norm) at which a column stops. Not sklearn's ``tol`` (an L1 change of the
        distributions between iterations): see ``docs/graphprop.md``.
    max_iter : int
        Iterations at most, per column (published LPOSS: 10).
    solver : {"auto", "cg", "fixed_point", "direct"}
        See the module doc (and :data:`SOLVER_TABLE`). The published LPOSS stages
        pass ``"cg"``.
    normalize : bool
        When True (default) ``P = W_hat^T`` with ``W_hat`` the in-degree
        normalisation of W without self-loops; when False ``P = W^T`` as given (PyG
        with an explicit ``edge_weight``).
    return_info : bool
        Return a :class:`PropagationResult` instead of Z.
    warn : bool or None
        Which :class:`ConvergenceWarning` to emit. ``None`` (default): only ``"cg"``'s
        warning that more than 1% of the rows have all their scores below its
        residual per entry (``||r_c|| / sqrt(N)``), as their ranking is noise.
        ``True``: also when a column stopped at ``max_iter`` before reaching ``tol``.
        ``False``: neither (the published LPOSS stages, which stop at 10 iterations
        by design). The float32-underflow warning is always emitted.

    Returns
    -------
    Tensor or PropagationResult
        Z, shaped like ``y``, on its device (or a :class:`PropagationResult`), in
        ``torch.promote_types(y.dtype, graph weights' dtype)``: y's dtype on a float32
        graph (LPOSS's), float64 on a float64 graph whatever y's dtype (a float32 Z
        would lose rows whose scores are below float32's smallest number: 62 of
        sklearn's digits example's 340). Every solver works in float64 or Z's dtype on
        weights normalised in float64, so a float32 Z is the float64 answer to float32
        rounding. A float16 or bfloat16 :class:`Graph` / :class:`GridGraph` is solved as
        its float32 copy (the same weights exactly), so Z is float32 there.

    Raises
    ------
    TypeError
        Naming the argument: a graph of another type, a dense matrix, ``y`` not a
        float32/float64 tensor, ``alpha``/``tol`` not a number, ``max_iter`` not an
        integer, ``solver`` not a string.
    ValueError
        Naming the argument: shapes that do not match, negative weights, an empty
        graph, NaN/inf, a value out of range, an unknown solver, a non-symmetric W
        for ``"cg"``, devices that differ, a solution that overflows Z's dtype.
    """
    with torch.no_grad():
        return _label_propagation(graph, y, alpha, tol, max_iter, solver, normalize, return_info, warn)


def _label_propagation(graph, y, alpha, tol, max_iter, solver, normalize, return_info, warn):
    graph = _check_graph(graph)
    # Graph's and GridGraph's compiled kernels (symmetry check, CSR, stencil) read no 16-bit floats:
    # their float32 copy is exact, normalised and solved in float32 or better. Another class that
    # implements the protocol serves its own operator in the dtype asked for, so it is left as given.
    if isinstance(graph, (Graph, GridGraph)) and graph.dtype in HALF_FLOATS:
        graph = graph.to(dtype=torch.float32)
    y = check_tensor("y", y, floating=True, finite=True).detach()
    if y.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"y must be float32 or float64, got {y.dtype}")
    if y.dim() not in (1, 2):
        raise ValueError(f"y must have shape (N, E) or (N,), got {tuple(y.shape)}")
    if y.size(0) != graph.num_nodes:
        raise ValueError(
            f"y must have one row per node: graph has N={graph.num_nodes} nodes, "
            f"y has shape {tuple(y.shape)}"
        )
    check_same_device(graph=graph.weight_values, y=y)
    alpha = check_range("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    tol = check_range("tol", tol, low=0.0)
    max_iter = check_positive_int("max_iter", max_iter)
    solver = check_choice("solver", solver, ("auto", *SOLVER_TABLE))
    normalize, return_info = check_bool("normalize", normalize), check_bool("return_info", return_info)
    warn = check_bool("warn", warn, none=True)
    if solver == "auto":
        solver = _auto_solver(graph)
    spec = SOLVER_TABLE[solver]
    if spec.check is not None:
        spec.check(graph)
    # only what needs it pays for the exact check (cached on the graph)
    if spec.needs_symmetric and not graph.is_symmetric():
        raise ValueError(f"graph must be symmetric (W == W^T) for solver={solver!r}; "
                         "use graphprop.symmetrize(graph) (W + W^T) or solver='fixed_point'")

    # Z's dtype: torch's promotion of y's and the weights' (float32 y on a float64 graph
    # gives float64 Z: a float32 Z would erase rows below float32's smallest number)
    dtype = result_dtype(graph, y)
    y2 = (y.unsqueeze(1) if y.dim() == 1 else y).to(dtype)
    y2, exponent = _scale_columns(y2)
    work = spec.dtype or dtype
    operator = graph.propagation_operator(work, normalize=normalize)
    z, iters, resid = spec.solve(operator, y2.to(work), alpha, tol, max_iter)
    if spec.reports_unresolved_rows and warn is not False:
        _warn_unresolved_rows(z, resid * y2.norm(dim=0))
    z = _unscale_columns(z, exponent)
    _check_finite_solution(z, normalize)
    if z.dtype != dtype:
        _warn_underflowed_rows(z, dtype)
        z = z.to(dtype)
        _check_finite_solution(z, normalize)
    resid = resid.to(dtype)
    converged = resid <= tol
    if warn and not bool(converged.all()):
        bad = int((~converged).sum())
        warnings.warn(
            f"label_propagation: {bad} of {converged.numel()} columns stopped at "
            f"max_iter={max_iter} above tol={tol:g} (largest relative residual "
            f"{float(resid.max()):.3g})",
            ConvergenceWarning,
            stacklevel=3,
        )
    z = z.squeeze(1) if y.dim() == 1 else z
    if not return_info:
        return z
    return PropagationResult(z, iters, resid, converged, solver)


# ------------------------------------------------------------ scale and checks
def result_dtype(graph: PropagationGraph, y: Tensor) -> torch.dtype:
    """The dtype of Z: ``torch.promote_types(y.dtype, weights' dtype)``, float32 or
    float64 (float16/bfloat16 weights with float32 y give float32). A float64 graph
    with float32 y gives float64, as ``y * W`` would in torch: the float64 answer kept,
    not cast to float32 where rows of small scores would become 0."""
    return torch.promote_types(y.dtype, graph.dtype)


def _scale_columns(y: Tensor) -> tuple[Tensor, Tensor]:
    """Columns whose largest magnitude is outside [2^-40, 2^40] times the power of two
    that brings it into [1, 2); the others as they are. Exact, and every solver is
    linear in Y with exactly scaled iterates, so only overflow (float32 ``||y||^2``
    for entries of 1e19) and underflow are avoided. Returns the scaled y and the
    exponents that undo it."""
    if y.numel() == 0:
        return y, torch.zeros(y.size(1), dtype=torch.int32, device=y.device)
    lo, hi = torch.aminmax(y, dim=0)
    top = torch.maximum(lo.abs(), hi.abs())
    _, exponent = torch.frexp(top)
    outside = (top > 0) & ((top < 2.0**-40) | (top > 2.0**40))
    exponent = torch.where(outside, exponent - 1, torch.zeros_like(exponent))
    if not bool(outside.any()):
        return y, exponent
    return _times_power_of_two(y, -exponent), exponent


def _unscale_columns(z: Tensor, exponent: Tensor) -> Tensor:
    return z if not bool(exponent.any()) else _times_power_of_two(z, exponent)


def _times_power_of_two(t: Tensor, exponent: Tensor) -> Tensor:
    """``t * 2^exponent`` per column, in two exact halves (2^128 overflows float32)."""
    half = torch.div(exponent, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(t, half.to(t.dtype)), (exponent - half).to(t.dtype))


def _check_finite_solution(z: Tensor, normalize: bool) -> None:
    if z.numel() and not finite_nonnegative(z)[0]:
        cause = "the graph's weights with normalize=False" if not normalize else "y's magnitude"
        raise ValueError(
            f"label_propagation: the solution overflows {z.dtype} (from {cause}); "
            f"use float64 y, smaller y or normalize=True"
        )


def _warn_unresolved_rows(z: Tensor, resid: Tensor) -> None:
    """Warn when rows of Z have every score at most the root-mean-square residual
    ``||r_c|| / sqrt(N)`` its column stopped at: the size of CG's error per entry where
    the error is spread evenly, so those rows' scores are not resolved and their argmax
    is noise (sklearn's digits example: most unlabelled nodes' true scores lie below
    ``tol * ||y||``: 249 of 340 rows). Only when more than UNRESOLVED_ROWS_WARN of the
    rows are: dense scores, as in LPOSS, sit far above it but for a few rows of
    near-zero scores (2 of 9,216 in the tests' pipeline)."""
    if not z.numel() or not bool((resid > 0).any()):
        return
    per_entry = resid / z.size(0) ** 0.5
    count = _count_rows_below(z, per_entry)
    if count <= UNRESOLVED_ROWS_WARN * z.size(0):
        return
    warnings.warn(
        f"label_propagation(solver='cg'): {count} of {z.size(0)} rows have all their scores below "
        f"the residual CG stopped at (per entry, ||r_c|| / sqrt(N), up to {float(per_entry.max()):.3g}), "
        f"so their ranking is not resolved: use solver='direct' or 'auto' on a small graph, or a "
        f"smaller tol and a larger max_iter",
        ConvergenceWarning,
        stacklevel=4,
    )


def _count_rows_below(z: Tensor, bound: Tensor) -> int:
    """Rows i with ``|z[i, c]| <= bound[c]`` for every c (one pass on CPU)."""
    if z.device.type == "cpu" and z.is_contiguous() and numba_available():
        from ._csr_kernels import count_rows_below

        return int(count_rows_below(z.numpy(), bound.to(z.dtype).numpy()))
    return int((z.abs() <= bound).all(dim=1).sum())


def _warn_underflowed_rows(z: Tensor, dtype: torch.dtype) -> None:
    """Warn when rows of the float64 solution are all zero once cast to ``dtype``."""
    lost = (z.abs().amax(1) > 0) & (z.to(dtype).abs().amax(1) == 0) if z.numel() else None
    if lost is None or not bool(lost.any()):
        return
    warnings.warn(
        f"label_propagation: {int(lost.sum())} of {z.size(0)} rows of the solution are below the "
        f"smallest {dtype} and come out all zero; pass y as float64 to keep them",
        ConvergenceWarning,
        stacklevel=4,
    )


# --------------------------------------------------------------------- graphs
def _check_graph(graph: object) -> PropagationGraph:
    """``graph`` as a :class:`~graphprop.PropagationGraph` without grad (a torch sparse
    tensor becomes a :class:`Graph`), its weights checked finite and non-negative."""
    if isinstance(graph, Tensor):
        if graph.layout == torch.strided:
            raise TypeError(
                "graph must be a graphprop.Graph, a GridGraph or a torch *sparse* (N, N) "
                "tensor; for a dense matrix use graphprop.Graph.from_dense"
            )
        graph = Graph.from_sparse(graph.detach())
    if not is_propagation_graph(graph):
        raise TypeError(
            f"graph must be a graphprop.Graph, a GridGraph or a torch sparse (N, N) tensor "
            f"(or a graphprop.PropagationGraph), got {type(graph).__name__}"
        )
    if graph.num_nodes == 0:
        raise ValueError("graph is empty (0 nodes)")
    graph = graph.detach()
    finite, nonnegative = finite_nonnegative(graph.weight_values)
    if not finite:
        raise ValueError("graph has NaN or infinite edge weights")
    if not nonnegative:
        raise ValueError("graph has negative edge weights; label propagation needs W >= 0")
    return graph


def _auto_solver(graph: PropagationGraph) -> str:
    """What ``solver="auto"`` picks: ``"direct"`` on small graphs whose form allows it
    (``graph.auto_direct``: edge lists, not grid graphs) of at most
    :data:`AUTO_DIRECT_MAX_NODES` nodes; else ``"cg"`` where W is symmetric (grid
    graphs built by ``grid_graph`` are), ``"fixed_point"`` where it is not."""
    if graph.auto_direct and graph.num_nodes <= AUTO_DIRECT_MAX_NODES:
        return "direct"
    return "cg" if graph.is_symmetric() else "fixed_point"


# -------------------------------------------------------------------- solvers
def _solve_cg(
    w_hat: GraphOperator, y: Tensor, alpha: float, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched CG on ``A = I - alpha W_hat``, one CG per column: per-column step sizes
    ``rho / <p, A p>`` and directions ``beta = rho / rho_prev``; a column that meets
    ``||r_c|| <= tol * ||y_c||`` is frozen (its step becomes 0), so every column
    follows exactly its own CG. State arrays are padded with all-zero (frozen)
    columns to the operator's preferred width (``padded_width(e)`` when it has one, else
    E rounded up to ``column_multiple``) and updated in place."""
    n, e = y.shape
    padded_width = getattr(w_hat, "padded_width", None)
    if padded_width is not None:
        width = max(e, int(padded_width(e)))
    else:
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
    w_hat: GraphOperator, y: Tensor, alpha: float, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor]:
    """PyG ``LabelPropagation`` (no clamping, no mask): ``F <- alpha P F + (1 - alpha) Y``
    from ``F = Y``; returns ``F / (1 - alpha)``. A column stops when
    ``||F_{t+1} - F_t|| / (1 - alpha)`` (the residual of ``F_t / (1 - alpha)``) is at
    most ``tol * ||y_c||``; all-zero columns take no iteration. The residual reported
    is that of the returned Z, computed from it (the difference of two iterates is
    exactly 0 once float32 rounding stalls the iteration, the residual is not)."""
    n, e = y.shape
    out = torch.zeros_like(y)
    iters = torch.zeros(e, dtype=torch.long, device=y.device)
    ynorm = y.norm(dim=0)
    atol = tol * ynorm
    cols = torch.arange(e, device=y.device)[ynorm > 0]
    f = y[:, cols].contiguous()
    res = (1 - alpha) * f
    for _ in range(max_iter):
        if cols.numel() == 0:
            break
        f_next = w_hat(f).mul_(alpha).add_(res)
        rnorm = (f_next - f).norm(dim=0) / (1 - alpha)
        f = f_next
        iters[cols] += 1
        done = rnorm <= atol[cols]
        if bool(done.any()):
            out[:, cols[done]] = f[:, done]
            cols, f, res = cols[~done], f[:, ~done], res[:, ~done]
    out[:, cols] = f
    z = out / (1 - alpha)
    resid = (y - z + alpha * w_hat(z)).norm(dim=0)
    return z, iters, _relative(resid, ynorm)


def _solve_direct(w_hat: GraphOperator, y: Tensor, alpha: float, tol: float = 0.0,
                  max_iter: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Dense ``torch.linalg.solve(I - alpha W_hat, Y)``; W_hat assembled column by column
    from the operator so every graph form is solved the same way (``tol`` and
    ``max_iter`` are not used: the solve is exact)."""
    n, e = y.shape
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    a = eye - alpha * w_hat(eye)
    z = torch.linalg.solve(a, y)
    resid = (y - a @ z).norm(dim=0)
    iters = torch.zeros(e, dtype=torch.long, device=y.device)
    return z, iters, _relative(resid, y.norm(dim=0))


def _relative(resid: Tensor, ynorm: Tensor) -> Tensor:
    return torch.where(ynorm > 0, resid / torch.where(ynorm > 0, ynorm, 1), torch.zeros_like(resid))


def _check_direct_size(graph: PropagationGraph) -> None:
    """``"direct"`` builds a dense (N, N) matrix: at most :data:`DIRECT_MAX_NODES` nodes."""
    if graph.num_nodes > DIRECT_MAX_NODES:
        raise ValueError(
            f"solver='direct' builds a dense (N, N) matrix and is limited to "
            f"N <= {DIRECT_MAX_NODES} nodes, got N={graph.num_nodes}; use solver='cg'"
        )


# ---------------------------------------------------------------- solver table
SolveFn = Callable[[GraphOperator, Tensor, float, float, int], "tuple[Tensor, Tensor, Tensor]"]


@dataclass(frozen=True)
class SolverSpec:
    """One solver of :func:`label_propagation`: an entry of :data:`SOLVER_TABLE`.

    Attributes
    ----------
    solve : callable
        ``solve(operator, y, alpha, tol, max_iter) -> (z, iterations, residual)``:
        ``operator`` the :class:`~graphprop.GraphOperator` ``z -> P @ z`` in the
        working dtype, ``y`` (N, E) in that dtype (columns power-of-two scaled, not
        all zero necessarily); returns ``z`` (N, E), (E,) int64 iterations and (E,)
        relative residuals (0 for an all-zero column).
    needs_symmetric : bool
        The solver needs ``W == W^T`` (``graph.is_symmetric()``, else a ValueError
        naming ``symmetrize`` and ``solver='fixed_point'``).
    dtype : torch.dtype or None
        The working dtype (None: y's); the solution is cast back to y's.
    check : callable or None
        ``check(graph)`` raises ValueError for a graph the solver refuses (size).
    reports_unresolved_rows : bool
        Whether the "rows below the residual" :class:`ConvergenceWarning` applies
        (an iterative solve stopped at a residual, from Z = 0).
    """

    solve: SolveFn
    needs_symmetric: bool = False
    dtype: torch.dtype | None = None
    check: Callable[[PropagationGraph], None] | None = None
    reports_unresolved_rows: bool = False


# name -> solver; "auto" is the rule of _auto_solver. A new solver: one function, one entry.
SOLVER_TABLE: dict[str, SolverSpec] = {
    "cg": SolverSpec(_solve_cg, needs_symmetric=True, reports_unresolved_rows=True),
    "fixed_point": SolverSpec(_solve_fixed_point),
    "direct": SolverSpec(_solve_direct, dtype=torch.float64, check=_check_direct_size),
}
SOLVERS = ("auto", *SOLVER_TABLE)
