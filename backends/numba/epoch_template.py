# flake8: noqa -- a template: epoch_codegen.py inserts the unrolled tiles and writes the module
"""Kernels of fastnn's compiled epoch (made from epoch_template.py by epoch_codegen.py).

One call of :func:`epoch` trains a run of mini-batches as thread ``tid`` of ``P``.
Every array is flat; ``lay`` (int64) says where each layer's pieces are:

- ``params`` / ``S1`` / ``S2``: every layer's ``W (rows, npo)`` then ``b (npo,)``, and
  the optimizer slots in the same places (momentum V; Adam M and V); the first layer's
  ``W`` of a deeper model is stored as one column block per thread (``lay[H_W0T]``);
- ``work``: activations ``Y``, gradients ``dZ`` (and −lr·dZ for plain SGD, which the
  update tiles then add to ``W`` in registers), per-thread partial products, masks;
- ``npo`` is a layer's width rounded up to whole vectors; the padding stays exactly 0.

Threads split every layer's units into contiguous blocks of whole vectors. Thread
``t`` computes its units of the first layer, and of every later layer a *partial*
product from its own input units only, so it reads and writes only its own rows and
columns of every ``W``; partials are summed after a barrier (2L - 3 barriers per
batch). Everything after the last barrier of a batch is computed identically by
every thread, so all stop at the same NaN/inf batch. Nothing here can raise: a
raising thread would leave the others spinning.
"""
import math

import numpy as np
from numba import njit

from fastnn.backends.numba.simd import (
    VECTOR_BITS, vabs, vlog, vlog1p, vwhere_ge, vwhere_gt, vadd, vbroadcast, vdiv, vexp, vexp2, vfind, vfma, vload,
    vlane, vmax, vmaxlanes, vmul, vsplat, vsqrt, vstore, vstore4, vsub, vsum, vsum4, vwidth)
from fastnn.backends.numba.sync import (
    atomic_load, atomic_store, cpu_relax, cycles, prefetch, rt, sched_yield, writable)

# Without nnan/ninf: the NaN/inf test of the loss must survive optimisation.
# Without NRT: no reference counting of the arrays passed to every tile call. Its atomic
# increments on one shared counter made two threads slower than one.
_ENTRY = dict(cache=True, nogil=True, fastmath={"contract", "nsz", "arcp"}, error_model="numpy",
              boundscheck=False, _nrt=False)
# Called from jitted code only: no Python wrapper to build, and no disk cache of their own (the
# entries' cached code holds theirs; saving each alone costs a compile to object code).
_JIT = dict(_ENTRY, cache=False, no_cpython_wrapper=True, no_cfunc_wrapper=True)
# Small helpers: typed into their callers (a compile of their own costs more than they do).
_INLINE = dict(_JIT, inline="always")

MR = 0  # rows of the batch per tile (set by the generator)
MK = 0  # rows of W per update tile (set by the generator)
DK = 0  # columns of dX per dX tile (set by the generator)
ROW_CHUNK = 64  # rows of the batch per pass of a plain SGD update (and of a data-parallel gradient)
TO_P, NEW_P, TO_G = range(3)  # an update tile's modes: add to P, overwrite P, write the scratch G
# dX of a layer with at most DX_VIA_FORWARD_NV output vectors, for at least DX_VIA_FORWARD_ROWS rows of
# the batch: forward tiles on Wᵀ (fewer rows: transposing W's block each batch costs more than it saves;
# more vectors: the dX tiles' horizontal sums are then few enough)
DX_VIA_FORWARD_NV, DX_VIA_FORWARD_ROWS = 3, 32
PREFETCH = 64  # how far ahead in a row of X the update asks for data (floats)
PREFETCH_ROWS = 32  # from this many rows per pass (fewer: the hardware's own prefetch keeps up)

# ---- the layout table: numba_epoch.py writes it with these names -------------------
H_L, H_NI, H_NO, H_N, H_LOSS, H_OPT, H_BSP, H_ROWS, H_IOTA, H_TP, H_PRIV, H_ZERO, H_NINF, H_G, H_W0T, \
    H_LONG, H_WT = range(17)
REC0, REC = 17, 19  # layer i's record starts at lay[REC0 + REC * i]
F_NOUT, F_NPO, F_NV, F_ACT, F_W, F_B, F_Y, F_DZ, F_PART, F_PSIZE, F_MASK, F_DS, F_Z, F_V, F_PRM, \
    F_DM, F_DB, F_DT, F_DSC = range(19)
# Dropout after a hidden layer (F_DM >= 0): its masks (rows x npo) at F_DM, the epoch's hash base
# (uint64 bits) at F_DB, the keep threshold at F_DT, the kept units' scale at work[F_DSC] (epoch_dropout.py.in)
# the codes of the op tables and the row h (float64, one per thread): generated
# <<CODES>>
# out (float64, 8 per thread)
OUT_LOSS, OUT_CORRECT, OUT_BAD, OUT_APPLIED, OUT_STATUS, OUT_DONE = range(6)  # OUT_APPLIED: steps taken
# OUT_STATUS: all batches done (or a bad one); Python raised the abort flag; the threads stopped
# early because another process takes the cores (Python goes on with one thread)
STATUS_DONE, STATUS_ABORTED, STATUS_CONTENDED = range(3)
# A wait at a barrier longer than lay[H_LONG] cycles means the partner was off its core (another
# process shares the cores); after LONG_WAITS_TO_STOP such waits that took a quarter of the
# time, one thread does better.
LONG_WAITS_TO_STOP = 3


# ---- element-wise pieces, generated from the op tables (epoch_ops.py) ----------------
# <<OPS>>


# <<TILES>>
@njit(**_ENTRY)
def epoch(X, T, labels, order, ids, wts, first, nbatch, bs, params, S1, S2, work, iwork, lay, h, sync, out, tid, P):
    """Train batches first .. first+nbatch-1 (batch b: rows order[b·bs : (b+1)·bs]) as thread tid of P;
    ``ids[row]``: the row's index in the whole training set (Dropout's masks follow it); ``wts``:
    the rows' sample weights (float64), or empty (unweighted).

    X (N·nI,), T (N·nO,) flat rows; ``h`` and ``out`` are this thread's rows. Stops
    before applying a batch whose loss is NaN/inf, or whose first layer's sums are (a NaN/inf
    in its rows of X): OUT_BAD = its index, else -1.
    """
    VW = vwidth(params)
    xs = writable(X)  # the tiles take X and work alike: one compile of each
    L, nI, nO, N = lay[H_L], lay[H_NI], lay[H_NO], lay[H_N]
    bsp, priv = lay[H_BSP], tid * lay[H_PRIV]
    ext = bsp + MR  # a row list: the batch (padded to tiles), then the next batch's first MR rows
    rows = iwork[lay[H_ROWS] + tid * ext: lay[H_ROWS] + (tid + 1) * ext]
    iota = iwork[lay[H_IOTA]: lay[H_IOTA] + ext]
    last = REC0 + REC * (L - 1)
    npo_l, nv_l, act_l = lay[last + F_NPO], lay[last + F_NV], lay[last + F_ACT]
    y_l, dz_l, tp = lay[last + F_Y] + priv, lay[last + F_DZ] + priv, lay[H_TP] + priv
    z_l = lay[last + F_Z] + priv if lay[last + F_Z] >= 0 else rt(-1)  # (the last layer's buffers are private)
    v_l, prm_l = lay[last + F_V] + priv, lay[last + F_PRM]
    g_at = lay[H_G] + priv  # scratch for gradient blocks
    wt_at = lay[H_WT] + priv  # scratch for a transposed block of W (backward_x)
    sgd = lay[H_OPT] == OPT_SGD
    nb = atomic_load(sync, 8 * tid)  # barriers passed so far: the numbering goes on across calls
    loss_sum, correct, bad, applied, done, status = 0.0, 0, -1, 0, 0, STATUS_DONE
    started, long_waits, waited = cycles(), 0, 0  # long waits at barriers: another process took a core
    for b in range(first, first + nbatch):
        if long_waits >= LONG_WAITS_TO_STOP and 4 * waited > cycles() - started:
            atomic_store(sync, 8 * P + 8, b + 1)  # all stop before batch b (read after its 1st barrier)
            long_waits = -1_000_000  # asked once
        start = b * bs
        R = min(bs, N - start)
        Rp = (R + MR - 1) // MR * MR
        for r in range(R):
            rows[r] = order[start + r]
        for r in range(R, Rp):  # padding rows repeat a real one; their dZ is 0
            rows[r] = rows[0]
        for m in range(MR):  # the next batch's first rows: the last tile's prefetch asks for them
            rows[Rp + m] = order[min(start + bs + m, N - 1)]
        for r in range(R):
            for j in range(nO):
                work[tp + r * npo_l + j] = T[rows[r] * nO + j]
        par = b & 1
        x_ok = True  # the first layer's sums are finite (else a row of X holds a NaN/inf)
        # ---- forward: the first layer by own units, later ones as partial products
        if L == 1:
            f0, f1 = _own(nI, tid, P)
            pb = lay[REC0 + F_PART] + (par * P + tid) * lay[REC0 + F_PSIZE]
            if tid == 0:
                forward(xs, rt(0), rows, nI, Rp, f0, f1, params, lay[REC0 + F_W], npo_l, rt(0), nv_l,
                        params, lay[REC0 + F_B], work, pb, npo_l)
            else:
                forward(xs, rt(0), rows, nI, Rp, f0, f1, params, lay[REC0 + F_W], npo_l, rt(0), nv_l,
                        work, lay[H_ZERO], work, pb, npo_l)
        else:  # this thread's columns u0:u1 of the first layer, its own block of W
            u0, u1 = _own(lay[REC0 + F_NV], tid, P)
            npo = lay[REC0 + F_NPO]
            forward(xs, rt(0), rows, nI, Rp, rt(0), nI, params, lay[lay[H_W0T] + tid], (u1 - u0) * VW, rt(0), u1 - u0,
                    params, lay[REC0 + F_B] + u0 * VW, work, lay[REC0 + F_Y] + u0 * VW, npo)
            x_ok = reduce(work, lay[REC0 + F_Y], rt(0), rt(1), Rp, npo, u0, u1, params, rt(-1), lay[REC0 + F_Y],
                          lay[REC0 + F_Z], lay[H_ZERO])
            act_rows(work, lay[REC0 + F_Y], npo, Rp, u0, u1, lay[REC0 + F_ACT], lay[REC0 + F_PRM], lay[REC0 + F_MASK])
            _drop(work, lay, rt(REC0), rows, ids, Rp, u0, u1)
            if not x_ok:
                if P == 1:
                    bad = b
                    break
                atomic_store(sync, 8 * tid + 1, b + 1)  # the others read it after the next barrier
        for i in range(1, L):
            rec, prev = REC0 + REC * i, REC0 + REC * (i - 1)
            p0, p1 = _own(lay[prev + F_NV], tid, P)
            npo, ldp = lay[rec + F_NPO], lay[prev + F_NPO]
            pb = lay[rec + F_PART] + (par * P + tid) * lay[rec + F_PSIZE]
            if i == L - 1 and tid == 0:  # thread 0 alone reads and updates the last bias
                forward(work, lay[prev + F_Y], iota, ldp, Rp, p0 * VW, p1 * VW, params, lay[rec + F_W], npo,
                        rt(0), lay[rec + F_NV], params, lay[rec + F_B], work, pb, npo)
            else:
                forward(work, lay[prev + F_Y], iota, ldp, Rp, p0 * VW, p1 * VW, params, lay[rec + F_W], npo,
                        rt(0), lay[rec + F_NV], work, lay[H_ZERO], work, pb, npo)
            if P > 1:
                nb += 1
                status, late = _meet(sync, tid, P, nb, i == 1, b, lay[H_LONG])
                if status:
                    break
                long_waits, waited = long_waits + (late > 0), waited + late
                if i == 1:  # a non-finite first layer in any thread's units: all stop here
                    for t in range(P):
                        x_ok = x_ok and atomic_load(sync, 8 * t + 1) != b + 1
                    if not x_ok:
                        break
            pb = lay[rec + F_PART] + par * P * lay[rec + F_PSIZE]
            if i < L - 1:
                u0, u1 = _own(lay[rec + F_NV], tid, P)
                reduce(work, pb, lay[rec + F_PSIZE], P, Rp, npo, u0, u1, params, lay[rec + F_B], lay[rec + F_Y],
                       lay[rec + F_Z], lay[H_ZERO])
                act_rows(work, lay[rec + F_Y], npo, Rp, u0, u1, lay[rec + F_ACT], lay[rec + F_PRM], lay[rec + F_MASK])
                _drop(work, lay, rec, rows, ids, Rp, u0, u1)
            else:
                reduce(work, pb, lay[rec + F_PSIZE], P, Rp, npo, rt(0), nv_l, params, rt(-1), y_l, z_l, lay[H_ZERO])
                act_rows(work, y_l, npo, Rp, rt(0), nv_l, act_l, prm_l, lay[rec + F_MASK])
        if status:
            break
        if L == 1:
            if P > 1:
                nb += 1
                status, late = _meet(sync, tid, P, nb, True, b, lay[H_LONG])
                if status:
                    break
                long_waits, waited = long_waits + (late > 0), waited + late
            pb = lay[REC0 + F_PART] + par * P * lay[REC0 + F_PSIZE]
            # every thread sums the partials alike: all see the same non-finite sum
            x_ok = reduce(work, pb, lay[REC0 + F_PSIZE], P, Rp, npo_l, rt(0), nv_l, params, rt(-1), y_l, z_l,
                          lay[H_ZERO])
            act_rows(work, y_l, npo_l, Rp, rt(0), nv_l, act_l, prm_l, lay[REC0 + F_MASK])
        if not x_ok:  # a NaN/inf in a row of X makes all its first-layer sums NaN or inf
            bad = b
            break
        # ---- loss: every thread alike, so every thread agrees on a bad batch
        weight, wscale = _batch_weight(wts, rows, R)
        den = float(R)
        if h[HY_DEN] > 0.0:  # a share of a global batch: the whole batch's rows, weight and scale
            den, weight, wscale = h[HY_DEN], h[HY_WEIGHT], h[HY_WSCALE]
        value, hits = batch_loss(work, y_l, dz_l, tp, lay[H_NINF], npo_l, nv_l, nO, R, Rp, lay[H_LOSS], labels,
                                 rows, wts, wscale, den)
        if not math.isfinite(value):
            bad = b
            break
        grad_rows(work, v_l, dz_l, npo_l, R, rt(0), nv_l, act_l, prm_l)  # dZ of the output activation
        done += 1
        correct += hits
        if weight == 0.0:  # every row weighs zero: no step, and no step counted
            continue
        step_scalars(h, h[HY_T0] + applied + 1)
        # ---- backward: the last layer (its dX first: it needs the old W)
        if tid == 0:
            bias_grad(work, dz_l, npo_l, Rp, rt(0), nv_l, g_at)
            apply_step(params, S1, S2, lay[last + F_B], rt(0), work, g_at, rt(1), nv_l, h, rt(False))
        if L == 1:
            if sgd:
                scale(work, dz_l, dz_l, npo_l, Rp, rt(0), nv_l, h)
            f0, f1 = _own(nI, tid, P)
            update(xs, rt(0), rows, nI, Rp, f0, f1, work, dz_l, npo_l, rt(0), nv_l, params, S1, S2,
                   lay[last + F_W], npo_l, h, rt(True), work, g_at)
        else:
            prev = last - REC
            p0, p1 = _own(lay[prev + F_NV], tid, P)
            backward_x(work, dz_l, npo_l, Rp, nv_l, nO, params, lay[last + F_W], npo_l, p0 * VW, p1 * VW,
                       work, lay[prev + F_DZ], lay[prev + F_NPO], iota, lay[H_ZERO], wt_at)
            if sgd:
                scale(work, dz_l, dz_l, npo_l, Rp, rt(0), nv_l, h)
            update(work, lay[prev + F_Y], iota, lay[prev + F_NPO], Rp, p0 * VW, p1 * VW, work, dz_l, npo_l,
                   rt(0), nv_l, params, S1, S2, lay[last + F_W], npo_l, h, rt(True), work, g_at)
        # ---- the hidden layers, top down: own units, then dX and the update by own input rows
        for i in range(L - 2, -1, -1):
            rec = REC0 + REC * i
            npo = lay[rec + F_NPO]
            u0, u1 = _own(lay[rec + F_NV], tid, P)
            if lay[rec + F_DM] >= 0:  # dY of the dropped output: through the mask first
                mask_rows(work, lay[rec + F_DZ], lay[rec + F_DM], npo, Rp, u0, u1)
            grad_rows(work, lay[rec + F_V], lay[rec + F_DZ], npo, Rp, u0, u1, lay[rec + F_ACT], lay[rec + F_PRM])
            bias_grad(work, lay[rec + F_DZ], npo, Rp, u0, u1, g_at)
            apply_step(params, S1, S2, lay[rec + F_B] + u0 * VW, rt(0), work, g_at, rt(1), u1 - u0, h, rt(False))
            if sgd:  # others still read this layer's dZ for their dX: scale into a copy
                scale(work, lay[rec + F_DZ], lay[rec + F_DS], npo, Rp, u0, u1, h)
            du = lay[rec + F_DS] if sgd else lay[rec + F_DZ]
            if i == 0:
                update(xs, rt(0), rows, nI, Rp, rt(0), nI, work, du + u0 * VW, npo, rt(0), u1 - u0,
                       params, S1, S2, lay[lay[H_W0T] + tid], (u1 - u0) * VW, h, rt(True), work, g_at)
            else:
                if P > 1:
                    nb += 1
                    status, late = _meet(sync, tid, P, nb, False, b, lay[H_LONG])
                    if status:
                        break
                    long_waits, waited = long_waits + (late > 0), waited + late
                prev = rec - REC
                q0, q1 = _own(lay[prev + F_NV], tid, P)
                ldp = lay[prev + F_NPO]
                backward_x(work, lay[rec + F_DZ], npo, Rp, lay[rec + F_NV], lay[rec + F_NOUT], params,
                           lay[rec + F_W], npo, q0 * VW, q1 * VW, work, lay[prev + F_DZ], ldp, iota, lay[H_ZERO],
                           wt_at)
                update(work, lay[prev + F_Y], iota, ldp, Rp, q0 * VW, q1 * VW, work, du, npo,
                       rt(0), lay[rec + F_NV], params, S1, S2, lay[rec + F_W], npo, h, rt(True), work, g_at)
        if status:
            done -= 1  # stopped inside the batch: none of it counts
            correct -= hits
            break
        loss_sum += value * weight
        applied += 1
    out[OUT_LOSS], out[OUT_CORRECT], out[OUT_BAD] = loss_sum, correct, bad
    out[OUT_APPLIED], out[OUT_STATUS], out[OUT_DONE] = applied, status, done
    h[HY_T0] += applied  # the step count for the next call of this run (per-step scalars)


@njit(**_ENTRY)
def apply_gradient(params, S1, S2, G, lay, h):
    """One step of h's rule on every parameter from the gradient G (laid out as params): the
    data-parallel step, after the processes summed their shares (epoch's OPT_GRADIENT calls)."""
    _step_range(params, S1, S2, G, rt(0), rt(1), lay, h, rt(0), params.shape[0])
