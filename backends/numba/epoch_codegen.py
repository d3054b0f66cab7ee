"""Writes, caches and imports the kernel module of the compiled epoch.

The register tiles of the three products are unrolled here (named vector
accumulators, so LLVM keeps them in registers); everything else comes from
the template ``epoch_template.py`` and the template text in ``PARTS``. Sizes are
run-time arguments: one compiled module serves every layer shape, once per dtype.

The source goes to a ``.py`` file in a cache folder named by its hash (``generated.py``).
"""
from __future__ import annotations

import os

from . import epoch_ops, generated
from .simd import VECTOR_BITS


def tile_shapes(vector_bits):
    """(MR, MK, DK, WIDTHS) for a register file: rows of the batch per forward / dX tile, rows of
    W per update tile, columns of dX per dX tile, and output vectors per tile (widest first).

    A tile's accumulators plus the vectors it loads per step must fit in the registers, or
    LLVM spills them to the stack inside the innermost loop. AVX-512 has 32 vector registers:
    forward 5x4 accumulators + 4 W vectors + 1 broadcast, update 4x4 + 4 + 1, dX 5x4 + 5 + 4.
    AVX2 has 16: forward 5x2 + 2 + 1, update 6x2 + 2 + 1, dX 5x2 + 2 (its D vectors are reloaded).
    MR stays 5 on both: a batch of 10 (Nielsen's) is two tiles with no padding rows.
    """
    if vector_bits >= 512:
        return 5, 4, 4, (4, 2, 1)
    return 5, 6, 2, (2, 1)


MR, MK, DK, WIDTHS = tile_shapes(VECTOR_BITS)

_HERE = os.path.dirname(os.path.abspath(__file__))


# ---- the unrolled tiles ------------------------------------------------------------
def _fwd_tile(nv):
    """Z[r0:r0+MR, vectors] = B + Σ_{k0<=k<k1} A[row r, k] · W[k, vectors] for every whole block of nv vectors
    from v on below v1; returns the first vector it left. Walks the blocks itself: the rows' set-up once."""
    out = ["@njit(**_JIT)",
           f"def fwd_{MR}x{nv}(A, abase, rows, astride, r0, k0, k1, W, wbase, ldw, v, v1, B, bbase, Z, zbase, ldz):",
           "    VW = vwidth(W)"]
    out += [f"    p{m} = abase + rows[r0 + {m}] * astride" for m in range(MR)]
    out += [f"    while v + {nv} <= v1:",
            "        j0 = v * VW"]
    out += [f"        b{v} = vload(B, bbase + j0 + {v} * VW)" for v in range(nv)]
    out += ["        " + "; ".join(f"a{m}_{v} = b{v}" for v in range(nv)) for m in range(MR)]
    out += ["        w = wbase + k0 * ldw + j0",
            "        for k in range(k0, k1):",
            "            " + "; ".join(f"w{v} = vload(W, w + {v} * VW)" for v in range(nv))]
    for m in range(MR):
        out += [f"            s = vbroadcast(A, p{m} + k)",
                "            " + "; ".join(f"a{m}_{v} = vfma(s, w{v}, a{m}_{v})" for v in range(nv))]
    out += ["            w += ldw", "        z = zbase + r0 * ldz + j0"]
    out += ["        " + "; ".join(f"vstore(Z, z + {v} * VW, a{m}_{v})" for v in range(nv)) + "; z += ldz"
            for m in range(MR)]
    out += [f"        v += {nv}", "    return v"]
    return "\n".join(out)


def _upd_tile(mk, nv):
    """The update of W[k0:k1, nv vectors from j0] with dW[k, j] = Σ_{r0<=r<r1} A[row r, k] · D[r, j], mk rows of W
    at a time.

    ``mode`` ``TO_P``: P ← keep·P + Σ_r A·D in registers (plain SGD: D holds −lr·dZ already, keep =
    1 − lr·weight_decay; the data-parallel gradient: P is the gradient buffer, keep 1, D dZ).
    ``NEW_P``: P ← Σ_r A·D (the gradient buffer's first chunk of rows). ``TO_G``: dW's rows k0:k1 go to
    the scratch G, row after row, for ``update``'s call of the optimizer step (one call there: inside
    each tile it made its code once per tile).
    """
    out = ["@njit(**_JIT)",
           f"def upd_{mk}x{nv}(A, abase, rows, astride, r0, r1, k0, k1, D, dbase, ldd, j0, P, pbase, ldw,"
           " mode, keep, G, gbase):",
           "    VW = vwidth(D)",
           "    zero, c = vsplat(D, 0.0), vsplat(D, keep)",
           "    far = r1 - r0 >= PREFETCH_ROWS",
           f"    for k in range(k0, k1, {mk}):",
           "        o = pbase + k * ldw + j0",
           "        ahead = far and k + PREFETCH < astride  # past the row's end: another row, not the next one",
           "        if mode == TO_P:"]
    for m in range(mk):
        out += ["            " + "; ".join(f"a{m}_{v} = vmul(c, vload(P, o + {m} * ldw + {v} * VW))"
                                          for v in range(nv))]
    out += ["        else:"]
    out += ["            " + "; ".join(f"a{m}_{v} = zero" for v in range(nv)) for m in range(mk)]
    out += ["        for r in range(r0, r1):",
            "            d = dbase + r * ldd + j0",
            "            " + "; ".join(f"d{v} = vload(D, d + {v} * VW)" for v in range(nv)),
            "            p = abase + rows[r] * astride + k",
            "            if ahead:  # the line PREFETCH floats on in this row: 64 rows at once defeat the hardware's",
            "                prefetch(A, p + PREFETCH)"]
    for m in range(mk):
        out += [f"            s = vbroadcast(A, p + {m})",
                "            " + "; ".join(f"a{m}_{v} = vfma(s, d{v}, a{m}_{v})" for v in range(nv))]
    out += ["        if mode != TO_G:"]
    out += ["            " + "; ".join(f"vstore(P, o + {m} * ldw + {v} * VW, a{m}_{v})" for v in range(nv))
            for m in range(mk)]
    out += ["        else:"]
    out += [f"            g = gbase + (k - k0) * {nv} * VW"]
    out += ["            " + "; ".join(f"vstore(G, g + {m * nv + v} * VW, a{m}_{v})" for v in range(nv))
            for m in range(mk)]
    return "\n".join(out)


def _dx_tile(mk):
    """O[r0+m, k+q] = Σ_j D[r0+m, j] · W[k+q, j] over nv vectors of j, for k from k0 to k1 by mk."""
    out = ["@njit(**_JIT)",
           f"def dx_{MR}x{mk}(D, dbase, ldd, r0, nv, W, wbase, ldw, k0, k1, O, obase, ldo):",
           "    VW = vwidth(W)",
           "    zero = vsplat(W, 0.0)",
           f"    for k in range(k0, k1, {mk}):"]
    out += ["        " + "; ".join(f"a{m}_{q} = zero" for q in range(mk)) for m in range(MR)]
    out += ["        for v in range(nv):",
            "            j = v * VW"]
    out += [f"            d{m} = vload(D, dbase + (r0 + {m}) * ldd + j)" for m in range(MR)]
    out += [f"            w{q} = vload(W, wbase + (k + {q}) * ldw + j)" for q in range(mk)]
    out += ["            " + "; ".join(f"a{m}_{q} = vfma(d{m}, w{q}, a{m}_{q})" for q in range(mk))
            for m in range(MR)]
    out += ["        o = obase + r0 * ldo + k"]
    if mk == 4:  # four sums per row in one add tree
        out += [f"        vstore4(O, o + {m} * ldo, vsum4(a{m}_0, a{m}_1, a{m}_2, a{m}_3))" for m in range(MR)]
    else:
        out += ["        " + "; ".join(f"O[o + {m} * ldo + {q}] = vsum(a{m}_{q})" for q in range(mk))
                for m in range(MR)]
    return "\n".join(out)


def _step_tile():
    """Lines that put the gradient of W's rows t0:kn, vectors v:v+nv, into G (mk rows per step)."""
    lines = []
    for mk in (MK, 1):
        lines += ["if mk == MK:" if mk == MK else "else:"]
        for i, nv in enumerate(WIDTHS):
            test = "if" if i == 0 else "elif" if i < len(WIDTHS) - 1 else "else"
            lines += [f"    {test} nv == {nv}:" if test != "else" else "    else:",
                      f"        upd_{mk}x{nv}(A, abase, rows, astride, rt(0), nrows, t0, kn, D, dbase, ldd, v * VW,"
                      " P, pbase, ldw, rt(TO_G), keep, G, gbase)"]
    return lines


def _widest(test):
    """The widest tile whose vectors fit ``test`` (with NV for its width), as an expression."""
    expr = str(WIDTHS[-1])
    for nv in reversed(WIDTHS[:-1]):
        expr = f"{nv} if {test.replace('NV', str(nv))} else {expr}"
    return expr


def _dispatch(name, call, then=None):
    """Lines that walk ``v`` from v0 to v1 with the widest tiles first (``then``: after each tile)."""
    lines = []
    for nv in WIDTHS:
        test = "while" if nv == WIDTHS[0] else "if"
        lines += [f"{test} v + {nv} <= v1:", f"    {name}{nv}({call})"]
        lines += [f"    {then.replace('NV', str(nv))}"] if then else []
        lines += [f"    v += {nv}"]
    return lines


#: Template text after the tiles, in this order: the tile drivers, then the other kernels by topic
#: (one generated module: numba's cache does not notice edits in other files a cached kernel calls).
PARTS = ("epoch_products.py.in", "epoch_dropout.py.in", "epoch_loss.py.in", "epoch_barrier.py.in",
         "epoch_ranks.py.in")


def source(cache=True):
    """The full text of the kernel module (``cache=False``: its kernels without numba's disk cache)."""
    template = _read("epoch_template.py")
    tiles = [_fwd_tile(nv) for nv in WIDTHS]
    tiles += [_upd_tile(mk, nv) for mk in (MK, 1) for nv in WIDTHS]
    tiles += [_dx_tile(dk) for dk in (DK, 1)]
    head, body = template.split("# <<TILES>>\n")
    head = head.replace("MR = 0", f"MR = {MR}").replace("MK = 0", f"MK = {MK}").replace("DK = 0", f"DK = {DK}")
    head = _filled(_filled(head, "# <<CODES>>\n", epoch_ops.constants() + "\n"), "# <<OPS>>\n", epoch_ops.source())
    if not cache:
        if "_ENTRY = dict(cache=True," not in head:
            raise RuntimeError("epoch_template.py: no '_ENTRY = dict(cache=True,' to turn the cache off in")
        head = head.replace("_ENTRY = dict(cache=True,", "_ENTRY = dict(cache=False,", 1)
    drivers = _read(PARTS[0])
    for mk, placeholder in ((MK, "MK"), (1, "1")):
        bounds = "k0, kmain" if mk == MK else "kmain, k1"
        for marker, into, mode, keep, indent in (("UPDATE", "P", "TO_P", "keep", 12),
                                                 ("GRADIENT", "S1", "NEW_P", "rt(1.0)", 16),
                                                 ("GRADIENT", "S1", "TO_P", "rt(1.0)", 16)):
            drivers = _filled(drivers, f"# <<{marker} {placeholder}{'' if marker == 'UPDATE' else ' ' + mode}>>",
                              _indent(_dispatch(f"upd_{mk}x", f"A, abase, rows, astride, r0, r1, {bounds}, D, dbase, "
                                                f"ldd, v * VW, {into}, pbase, ldw, rt({mode}), {keep}, G, gbase"),
                                      indent))
    drivers = _filled(drivers, "# <<STEP TILE>>", _indent(_step_tile(), 12))
    drivers = _filled(drivers, "WIDEST_FITTING", _widest("v + NV <= v1"))
    drivers = _filled(drivers, "# <<FORWARD>>", _indent(
        [f"v = fwd_{MR}x{nv}(A, abase, rows, astride, r0, k0, k1, W, wbase, ldw, v, v1, B, bbase, Z, zbase, ldz)"
         for nv in WIDTHS], 8))
    drivers = drivers.replace("dx_MRxDK", f"dx_{MR}x{DK}").replace("dx_MRx1", f"dx_{MR}x1")
    return "\n\n\n".join([head.rstrip(), *tiles, drivers, *map(_read, PARTS[1:]), body]) + "\n"


def _read(name):
    with open(os.path.join(_HERE, name)) as f:
        return f.read()


def _filled(text, marker, insert):
    if text.count(marker) != 1:
        raise RuntimeError(f"epoch template: expected one {marker.strip()!r}")
    return text.replace(marker, insert)


def _indent(lines, n):
    return "\n".join(" " * n + line for line in lines).lstrip()


def load():
    """The kernel module, generated, cached and imported once (``generated.load``)."""
    return generated.load("fastnn_epoch_kernels", "epoch", source,
                          depends_on=[os.path.join(_HERE, name) for name in ("simd.py", "simd_math.py", "sync.py")])
