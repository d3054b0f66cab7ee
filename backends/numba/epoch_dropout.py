# flake8: noqa -- template text: epoch_codegen.py appends it to the generated kernel module
# The compiled epoch's Dropout: masks from a hash of (row index in X, unit), as fastnn/ops/dropout.py
# makes them (the same masks as every other path), and dY through them.

U11, U27, U30, U31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@njit(**_INLINE)
def _mix(x):
    """splitmix64's finalizer (fastnn.ops.dropout.mix_int); uint64 products wrap."""
    x = (x ^ (x >> U30)) * MIX1
    x = (x ^ (x >> U27)) * MIX2
    return x ^ (x >> U31)


@njit(**_JIT)
def drop_rows(work, ybase, vbase, mbase, ld, nrows, v0, v1, rows, ids, base, thr, scale):
    """Dropout on vectors v0:v1 of rows 0:nrows: mask = scale where the hash of (row index in X,
    unit) keeps the unit, else 0; Y ·= mask. ``vbase >= 0``: Y before the mask is kept there
    (the activation's derivative reads Y)."""
    VW = vwidth(work)
    for r in range(nrows):
        rh = _mix(np.uint64(ids[rows[r]]) ^ base)
        for j in range(v0 * VW, v1 * VW):
            o = r * ld + j
            m = scale if (_mix(rh ^ np.uint64(j)) >> U11) >= thr else scale - scale  # 0 in work's dtype
            work[mbase + o] = m
            y = work[ybase + o]
            if vbase >= 0:
                work[vbase + o] = y
            work[ybase + o] = y * m


@njit(**_INLINE)
def mask_rows(work, dbase, mbase, ld, nrows, v0, v1):
    """dY ·= mask on vectors v0:v1 of rows 0:nrows (the backward of dropout)."""
    VW = vwidth(work)
    for r in range(nrows):
        for v in range(v0, v1):
            o = r * ld + v * VW
            vstore(work, dbase + o, vmul(vload(work, dbase + o), vload(work, mbase + o)))


@njit(**_INLINE)
def _drop(work, lay, rec, rows, ids, nrows, u0, u1):
    """Dropout of layer ``rec``'s units u0:u1 after its activation, where it has one."""
    if lay[rec + F_DM] >= 0:
        v = lay[rec + F_V]  # Y's copy before the mask where the derivative reads Y (else V is Z)
        vbase = v if v != lay[rec + F_Y] and v != lay[rec + F_Z] else rt(-1)
        drop_rows(work, lay[rec + F_Y], vbase, lay[rec + F_DM], lay[rec + F_NPO], nrows, u0, u1, rows, ids,
                  np.uint64(lay[rec + F_DB]), np.uint64(lay[rec + F_DT]), work[lay[rec + F_DSC]])
