# flake8: noqa -- template text: epoch_codegen.py appends it to the generated kernel module
# The compiled epoch's products and the passes around them: the tile drivers (forward, update,
# backward_x; epoch_codegen.py fills in their unrolled tiles), the partial sums, the bias gradient.


@njit(**_JIT)
def forward(A, abase, rows, astride, nrows, k0, k1, W, wbase, ldw, v0, v1, B, bbase, Z, zbase, ldz):
    """Z[:nrows, vectors v0:v1] = B + A[rows, k0:k1] @ W[k0:k1, vectors v0:v1]."""
    VW = vwidth(W)
    for r0 in range(0, nrows, MR):
        nxt = r0 + MR  # the next tile's rows (after the last: MR more in every row list) are asked for
        v = v0
        # <<FORWARD>>


@njit(**_JIT)
def update(A, abase, rows, astride, nrows, k0, k1, D, dbase, ldd, v0, v1, P, S1, S2, pbase, ldw, h, decays,
           G, gbase):
    """The optimizer step on P[k0:k1, vectors v0:v1] with gradient A[rows, k0:k1]ᵀ @ D.

    For plain SGD, D must hold −lr·dZ (see ``scale``); G is scratch for the other optimizers.
    """
    VW = vwidth(P)
    sgd = int(h[HY_KIND]) == OPT_SGD
    keep = 1.0 - h[HY_LR] * h[HY_WD] if sgd and decays else 1.0
    kmain = k0 + (k1 - k0) // MK * MK
    if sgd:  # adds to W as it goes: take the batch in chunks of rows whose D stays in L1 (large batches)
        for r0 in range(0, nrows, ROW_CHUNK):
            r1 = min(r0 + ROW_CHUNK, nrows)
            v = v0
            # <<UPDATE MK>>
            v = v0
            # <<UPDATE 1>>
        return
    v = v0
    while v < v1:  # one call of the step per tile: its code once here, not in every tile
        nv = WIDEST_FITTING
        span = MK * ((v1 - v0) // nv)  # rows of dW of nv vectors that fit G (it holds MK rows of all)
        k = k0
        while k < k1:
            mk = MK if k < kmain else 1
            kn = min(k + span, kmain if mk == MK else k1)
            # <<STEP TILE>>
            apply_step(P, S1, S2, pbase + k * ldw + v * VW, ldw, G, gbase, kn - k, nv, h, decays)
            k = kn
        v += nv


@njit(**_JIT)
def backward_x(D, dbase, ldd, nrows, nv, nO, W, wbase, ldw, k0, k1, O, obase, ldo, iota, zero, tbase):
    """O[:nrows, k0:k1] = D[:nrows, :nv vectors] @ W[k0:k1, :nv vectors]ᵀ  (dX = dZ Wᵀ).

    With few outputs (a classifier's last layer) the dot products over nv vectors would be
    mostly horizontal sums: then W's block goes transposed to the scratch at O[tbase:]
    (nO rows of k1 - k0) and the forward tiles compute D[:, :nO] @ Wᵀ (784-128-10 at batch
    1024: epochs ~5% faster). ``zero``: a zero region of O at least k1 - k0 long; ``iota``: 0, 1, 2, ...
    """
    if nv <= DX_VIA_FORWARD_NV and nrows >= DX_VIA_FORWARD_ROWS:
        VW = vwidth(W)
        n = k1 - k0
        for k in range(k0, k1):
            for j in range(nO):
                O[tbase + j * n + k - k0] = W[wbase + k * ldw + j]
        forward(D, dbase, iota, ldd, nrows, rt(0), nO, O, tbase, n, rt(0), n // VW, O, zero, O, obase + k0, ldo)
        return
    kmain = k0 + (k1 - k0) // DK * DK
    for r0 in range(0, nrows, MR):
        dx_MRxDK(D, dbase, ldd, r0, nv, W, wbase, ldw, k0, kmain, O, obase, ldo)
        dx_MRx1(D, dbase, ldd, r0, nv, W, wbase, ldw, kmain, k1, O, obase, ldo)


@njit(**_INLINE)
def scale(work, src, dst, ld, nrows, v0, v1, h):
    """dst = −lr · src on vectors v0:v1 (plain SGD: the updates then add A·dst to W directly)."""
    VW = vwidth(work)
    c = vsplat(work, -h[HY_LR])
    for r in range(nrows):
        for v in range(v0, v1):
            vstore(work, dst + r * ld + v * VW, vmul(c, vload(work, src + r * ld + v * VW)))


@njit(**_JIT)
def reduce(work, pbase, psize, P, nrows, ld, v0, v1, B, bbase, ybase, zbase, zero):
    """Y = Σ_t partial_t (+ b where bbase >= 0) on vectors v0:v1, the sum also kept at zbase where
    zbase >= 0 (an activation whose derivative needs Z); True when every sum was finite (z · 0 is
    NaN for z NaN or ±inf: a sum of them is 0 only if all were finite). ``zero``: a zero region of
    work as long as a row. With P = 1 and pbase = ybase it works on Y in place."""
    VW = vwidth(work)
    # one loop without branches (LLVM would copy it for each case)
    bias, bb = (B, bbase) if bbase >= 0 else (work, zero)
    zb = zbase if zbase >= 0 else ybase
    check = vsplat(work, 0.0)
    for r in range(nrows):
        for v in range(v0, v1):
            o = r * ld + v * VW
            z = vadd(vload(work, pbase + o), vload(bias, bb + v * VW))
            for t in range(1, P):  # in thread order: every thread gets the same sum
                z = vadd(z, vload(work, pbase + t * psize + o))
            check = vfma(z, vsplat(work, 0.0), check)
            vstore(work, zb + o, z)
            vstore(work, ybase + o, z)
    return vsum(check) == 0.0


@njit(**_JIT)
def bias_grad(work, dbase, ld, nrows, v0, v1, gbase):
    """The gradient Σ_rows dZ of b's vectors v0:v1, into work[gbase:]."""
    VW = vwidth(work)
    for v in range(v0, v1):
        g = vsplat(work, 0.0)
        for r in range(nrows):
            g = vadd(g, vload(work, dbase + r * ld + v * VW))
        vstore(work, gbase + (v - v0) * VW, g)
