# flake8: noqa -- template text: epoch_codegen.py appends it to the generated kernel module
# The compiled epoch's loss of a batch and dY of its last layer (every thread alike).


@njit(**_INLINE)
def _batch_weight(wts, rows, R):
    """(Σw, wscale) of the batch's R rows: the unweighted mean (Σw = R, wscale 0) without weights
    or where they are all alike, as the layer path does; else wscale = R / Σw."""
    if wts.shape[0] == 0:
        return float(R), 0.0
    total, alike = 0.0, True
    for r in range(R):
        total += wts[rows[r]]
        alike = alike and wts[rows[r]] == wts[rows[0]]
    if alike or total == 0.0:
        return total, 0.0
    return total, R / total


@njit(**_JIT)
def batch_loss(work, ybase, dbase, tbase, nbase, ld, nv, nO, R, Rp, kind, labels, rows, wts, wscale, den):
    """(loss sum / den, correct rows) of the batch's R rows, den the rows of the whole batch (more
    than R where these are a share of a global one); writes dY of the last layer (rows R:Rp zero;
    the epoch takes it through the activation: its code once there, not in here too).
    ``wscale > 0``: row r's loss and dZ count ``wts[rows[r]] · wscale`` times (wscale = den / Σw:
    the weighted mean, as the layer path weighs a batch)."""
    VW = vwidth(work)
    zero, inv = vsplat(work, 0.0), vsplat(work, 1.0 / den)
    total, correct = 0.0, 0
    for r in range(R):
        y0, t0, d0 = ybase + r * ld, tbase + r * ld, dbase + r * ld
        before = total
        if kind == LOSS_MSE:  # ½‖y − t‖², dY = (y − t) / R
            acc = zero
            for v in range(nv):
                d = vsub(vload(work, y0 + v * VW), vload(work, t0 + v * VW))
                acc = vfma(d, d, acc)
                vstore(work, d0 + v * VW, vmul(d, inv))
            total += 0.5 * vsum(acc)
        elif kind == LOSS_CROSS_ENTROPY:  # softmax cross-entropy on the row; padding masked by -inf
            m = -math.inf
            for v in range(nv):
                m = max(m, vmaxlanes(vadd(vload(work, y0 + v * VW), vload(work, nbase + v * VW))))
            top = vsplat(work, m)
            s, ts = zero, zero
            for v in range(nv):
                e = vexp(vsub(vadd(vload(work, y0 + v * VW), vload(work, nbase + v * VW)), top))
                vstore(work, d0 + v * VW, e)
                s = vadd(s, e)
                ts = vadd(ts, vload(work, t0 + v * VW))
            e_sum, t_sum = vsum(s), vsum(ts)
            lse = vsplat(work, m + math.log(e_sum))
            scale = vsplat(work, t_sum / e_sum)
            acc = zero
            for v in range(nv):
                t = vload(work, t0 + v * VW)
                acc = vfma(t, vsub(lse, vload(work, y0 + v * VW)), acc)
                vstore(work, d0 + v * VW, vmul(vsub(vmul(vload(work, d0 + v * VW), scale), t), inv))
            total += vsum(acc)
        else:  # sigmoid cross-entropy per output: softplus(z) − t·z
            for j in range(nO):
                z, t = work[y0 + j], work[t0 + j]
                total += max(z, 0.0) + math.log1p(math.exp(-abs(z))) - t * z
                work[d0 + j] = (1.0 / (1.0 + math.exp(-z)) - t) / den
        if wscale > 0.0:  # this row's share of the weighted mean
            s = wts[rows[r]] * wscale
            total = before + (total - before) * s
            for v in range(nv):
                vstore(work, d0 + v * VW, vmul(vload(work, d0 + v * VW), vsplat(work, s)))
        if nO == 1:  # as Sequential._n_correct
            guess = 1 if work[y0] > (0.5 if kind == LOSS_MSE else 0.0) else 0
        else:
            guess, best = 0, work[y0]
            for j in range(1, nO):
                if work[y0 + j] > best:
                    guess, best = j, work[y0 + j]
        if guess == labels[rows[r]]:
            correct += 1
    for r in range(R, Rp):
        for v in range(nv):
            vstore(work, dbase + r * ld + v * VW, zero)
    return total / den, correct
