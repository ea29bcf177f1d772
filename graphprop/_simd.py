"""Explicit SIMD building blocks for the numba stencil (numba intrinsics emitting LLVM IR).

numba's auto-vectoriser keeps a per-pixel accumulator in memory (a load and a store
per multiply-add); these intrinsics keep ``J x NV`` accumulators of ``LANES`` floats
in registers across a whole window row instead. Only imported with numba.

All "vectors" are ``LANES`` = 16 consecutive elements of a C-contiguous array (one
AVX-512 register of float32, two of float64), addressed by flat element index.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16
MAX_PIXELS = 4  # J: output pixels of one register block
MAX_VECTORS = 3  # NV: vectors (columns / LANES) of one register block
_I64 = ir.IntType(64)


def _vector(context, dtype) -> ir.VectorType:
    return ir.VectorType(context.get_value_type(dtype), LANES)


def _fma(builder, vt: ir.VectorType):
    suffix = "f32" if isinstance(vt.element, ir.FloatType) else "f64"
    name = f"llvm.fma.v{LANES}{suffix}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)


def _data(context, builder, aryty, ary):
    return context.make_array(aryty)(context, builder, ary).data


def _at(builder, ptr, index, vt):
    """Pointer to the vector starting at element ``index`` of ``ptr``."""
    return builder.bitcast(builder.gep(ptr, [index]), ir.PointerType(vt))


def _splat(builder, vt, value):
    v = builder.insert_element(ir.Constant(vt, None), value, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    return builder.shuffle_vector(v, ir.Constant(vt, None), mask)


@intrinsic
def scratch(typingctx, dtype):  # pragma: no cover - compiled
    """A stack buffer of ``MAX_PIXELS * MAX_VECTORS * LANES`` elements of ``dtype`` (pointer)."""

    def codegen(context, builder, sig, args):
        size = context.get_constant(types.intp, MAX_PIXELS * MAX_VECTORS * LANES)
        return cgutils.alloca_once(builder, context.get_value_type(dtype.dtype), size=size)

    return types.CPointer(dtype.dtype)(dtype), codegen


@intrinsic
def zero(typingctx, acc, count):  # pragma: no cover - compiled
    """acc[: count * LANES] = 0."""

    def codegen(context, builder, sig, args):
        vt = _vector(context, acc.dtype)
        with cgutils.for_range(builder, args[1]) as loop:
            index = builder.mul(loop.index, ir.Constant(_I64, LANES))
            builder.store(ir.Constant(vt, None), _at(builder, args[0], index, vt), align=4)
        return context.get_dummy_value()

    return types.none(acc, count), codegen


def window_row(pixels: int, vectors: int):
    """The intrinsic ``row(acc, w, w0, wstep, z, z0, zstep, e, n)``: for ``d < n``, every
    ``j < pixels`` and ``c < vectors``::

        acc[j, c] += w.flat[w0 + d * wstep + j] * z.flat[z0 + d * zstep + j * e + c * LANES :][:LANES]

    with the ``pixels * vectors`` accumulators in registers for the whole row
    (loaded from and stored back to ``acc``, laid out (pixels, vectors, LANES))."""

    @intrinsic
    def row(typingctx, acc, w, w0, wstep, z, z0, zstep, e, n):  # pragma: no cover - compiled
        def codegen(context, builder, sig, args):
            pacc, warr, w0v, wstepv, zarr, z0v, zstepv, ev, nv = args
            vt = _vector(context, acc.dtype)
            fma = _fma(builder, vt)
            wdata, zdata = _data(context, builder, w, warr), _data(context, builder, z, zarr)
            slots = [[cgutils.alloca_once(builder, vt) for _ in range(vectors)] for _ in range(pixels)]
            home = [[_at(builder, pacc, ir.Constant(_I64, (j * vectors + c) * LANES), vt)
                     for c in range(vectors)] for j in range(pixels)]
            for j in range(pixels):
                for c in range(vectors):
                    builder.store(builder.load(home[j][c], align=4), slots[j][c])
            with cgutils.for_range(builder, nv) as loop:
                wbase = builder.add(w0v, builder.mul(loop.index, wstepv))
                zbase = builder.add(z0v, builder.mul(loop.index, zstepv))
                for j in range(pixels):
                    weight = builder.load(builder.gep(wdata, [builder.add(wbase, ir.Constant(_I64, j))]))
                    wv = _splat(builder, vt, context.cast(builder, weight, w.dtype, acc.dtype))
                    zj = builder.add(zbase, builder.mul(ev, ir.Constant(_I64, j)))
                    for c in range(vectors):
                        zc = builder.add(zj, ir.Constant(_I64, c * LANES))
                        zz = builder.load(_at(builder, zdata, zc, vt), align=4)
                        builder.store(builder.call(fma, [zz, wv, builder.load(slots[j][c])]), slots[j][c])
            for j in range(pixels):
                for c in range(vectors):
                    builder.store(builder.load(slots[j][c]), home[j][c], align=4)
            return context.get_dummy_value()

        return types.none(acc, w, w0, wstep, z, z0, zstep, e, n), codegen

    return row


@intrinsic
def store(typingctx, acc, ai, out, oi):  # pragma: no cover - compiled
    """out.flat[oi :][:LANES] = acc[ai :][:LANES]."""

    def codegen(context, builder, sig, args):
        vt = _vector(context, acc.dtype)
        v = builder.load(_at(builder, args[0], args[1], vt), align=4)
        builder.store(v, _at(builder, _data(context, builder, out, args[2]), args[3], vt), align=4)
        return context.get_dummy_value()

    return types.none(acc, ai, out, oi), codegen


@intrinsic
def store_shifted(typingctx, acc, ai, z, q, zi, alpha, dots, di):  # pragma: no cover - compiled
    """With ``v = z.flat[zi:][:LANES] - alpha * acc[ai:][:LANES]``: ``q.flat[zi:][:LANES] = v``
    and ``dots.flat[di:][:LANES] += z.flat[zi:][:LANES] * v`` (one CG step's ``A p`` and
    ``p . A p`` at once)."""

    def codegen(context, builder, sig, args):
        pacc, aiv, zarr, qarr, ziv, alphav, darr, div = args
        vt = _vector(context, acc.dtype)
        fma = _fma(builder, vt)
        a = builder.load(_at(builder, pacc, aiv, vt), align=4)
        pz = _at(builder, _data(context, builder, z, zarr), ziv, vt)
        pq = _at(builder, _data(context, builder, q, qarr), ziv, vt)
        pd = _at(builder, _data(context, builder, dots, darr), div, vt)
        zz = builder.load(pz, align=4)
        minus_alpha = _splat(builder, vt, builder.fneg(context.cast(builder, alphav, alpha, acc.dtype)))
        v = builder.call(fma, [a, minus_alpha, zz])
        builder.store(v, pq, align=4)
        builder.store(builder.call(fma, [zz, v, builder.load(pd, align=4)]), pd, align=4)
        return context.get_dummy_value()

    return types.none(acc, ai, z, q, zi, alpha, dots, di), codegen
