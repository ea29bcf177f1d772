"""Explicit SIMD building blocks for the numba stencil and CSR product (numba intrinsics
emitting LLVM IR).

numba's auto-vectoriser keeps a per-pixel (per-row) accumulator in memory (a load and a
store per multiply-add); these intrinsics keep ``J x NV`` accumulators of ``LANES`` floats
in registers across a whole window row (:func:`window_row`) or a whole CSR row
(:func:`gather_row`) instead. Only imported with numba.

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


def _prefetch_lines(builder, data, index, lines: int, itemsize: int) -> None:
    """Prefetch, for reading into all cache levels, ``lines`` cache lines (64 B) from
    element ``index`` of ``data`` (``llvm.prefetch``: a hint, it never faults)."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        "llvm.prefetch.p0i8")
    for line in range(lines):
        at = builder.gep(data, [builder.add(index, ir.Constant(_I64, line * 64 // itemsize))])
        builder.call(fn, [builder.bitcast(at, i8p), i32(0), i32(3), i32(1)])  # read, keep, data


def _wide(builder, index):
    """A signed index as 64 bits."""
    return builder.sext(index, _I64) if index.type.width < 64 else index


def gather_row(vectors: int):
    """The intrinsic ``row(acc, values, indices, a, b, z, z0, e, ahead)`` of the CSR product:
    for ``a <= k < b`` and every ``c < vectors``::

        acc[c] += values[k] * z.flat[indices[k] * e + z0 + c * LANES :][:LANES]

    with the ``vectors`` accumulators in registers for the whole row (loaded from and stored
    back to ``acc``). ``ahead > 0``: also prefetch the vectors that entry ``k + ahead`` will
    gather (where ``k + ahead < len(indices)``); the gathers are random, so the hardware
    prefetcher cannot see them coming."""

    @intrinsic
    def row(typingctx, acc, values, indices, a, b, z, z0, e, ahead):  # pragma: no cover - compiled
        def codegen(context, builder, sig, args):
            pacc, varr, iarr, av, bv, zarr, z0v, ev, aheadv = (
                context.cast(builder, value, ty, types.intp) if isinstance(ty, types.Integer) else value
                for value, ty in zip(args, sig.args, strict=True))
            vt = _vector(context, acc.dtype)
            fma = _fma(builder, vt)
            vdata, idata = _data(context, builder, values, varr), _data(context, builder, indices, iarr)
            zdata = _data(context, builder, z, zarr)
            nnz = cgutils.unpack_tuple(builder, context.make_array(indices)(context, builder, iarr).shape, 1)[0]
            itemsize = context.get_abi_sizeof(context.get_value_type(z.dtype))
            lines = -(-vectors * LANES * itemsize // 64)
            slots = [cgutils.alloca_once(builder, vt) for _ in range(vectors)]
            home = [_at(builder, pacc, ir.Constant(_I64, c * LANES), vt) for c in range(vectors)]
            for c in range(vectors):
                builder.store(builder.load(home[c], align=4), slots[c])
            with cgutils.for_range(builder, builder.sub(bv, av)) as loop:
                k = builder.add(av, loop.index)
                later = builder.add(k, aheadv)
                wanted = builder.and_(builder.icmp_signed(">", aheadv, ir.Constant(_I64, 0)),
                                      builder.icmp_signed("<", later, nnz))
                with builder.if_then(wanted):
                    j_later = _wide(builder, builder.load(builder.gep(idata, [later])))
                    _prefetch_lines(builder, zdata, builder.add(builder.mul(j_later, ev), z0v), lines, itemsize)
                weight = builder.load(builder.gep(vdata, [k]))
                wv = _splat(builder, vt, context.cast(builder, weight, values.dtype, acc.dtype))
                j = _wide(builder, builder.load(builder.gep(idata, [k])))
                zbase = builder.add(builder.mul(j, ev), z0v)
                for c in range(vectors):
                    zz = builder.load(_at(builder, zdata, builder.add(zbase, ir.Constant(_I64, c * LANES)), vt),
                                      align=4)
                    builder.store(builder.call(fma, [zz, wv, builder.load(slots[c])]), slots[c])
            for c in range(vectors):
                builder.store(builder.load(slots[c]), home[c], align=4)
            return context.get_dummy_value()

        return types.none(acc, values, indices, a, b, z, z0, e, ahead), codegen

    return row
