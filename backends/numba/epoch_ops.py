"""The compiled epoch's element-wise pieces, generated from the op tables: ``act`` / ``act_grad``
(one branch per activation of ``fastnn.ops.activations``), ``apply_step`` and ``apply_summed_step``
(one branch per update rule of ``fastnn.ops.optimizers``), ``step_scalars`` and the codes, in SIMD vectors
(``simd.py``). ``epoch_codegen`` puts this text where the template says ``# <<OPS>>``."""
from __future__ import annotations

from fastnn.losses import CODES as LOSS_CODES
from fastnn.ops import activations, optimizers
from fastnn.ops.symbolic import SymMath, lower, var

#: The row ``h`` of a thread: the rule's code, the steps taken before this call, then the rule's
#: inputs (``rule.inputs``: lr, weight_decay, its hyper-parameters, its per-step scalars); at the
#: end, where HY_DEN > 0, the batch's rows are a share of a global batch (data parallel): the global
#: batch's row count, weight (Σw, or its rows) and weighted-mean scale (0: the plain mean).
HY_KIND, HY_T0, HY_IN = 0, 1, 2
HY_DEN, HY_WEIGHT, HY_WSCALE, H_WIDTH = 13, 14, 15, 16
assert HY_IN + optimizers.MAX_INPUTS <= HY_DEN
#: A rule of the compiled epoch alone: the step stores the gradient in slot S1 and leaves the
#: parameter as it is (a data-parallel step sums it over processes before the real rule applies it).
OPT_GRADIENT = len(optimizers.RULES)


def _vconst(value):
    return f"vsplat(like, {value!r})"


def _branches(cases, indent, fallback=None):
    """``if code == c: ... elif ...`` over ``cases`` [(code, comment, lines)]."""
    pad, lines, keyword = " " * indent, [], "if"
    for code, comment, body in cases:
        lines.append(f"{pad}{keyword} code == {code}:  # {comment}")
        lines += [pad + "    " + line for line in body]
        keyword = "elif"
    if fallback:
        lines += [f"{pad}else:"] + [pad + "    " + line for line in fallback]
    return lines


def _rows(formula, operand, load, store):
    """Per activation (identity aside) a loop over rows r < nrows and vectors v0 <= v < v1:
    ``operand = load``, the formula's statements, then ``store`` with ``{}`` for its value; the code
    picks the loop once, outside it, so every formula is inline in its own loop (LLVM vectorises and
    inlines it there, which it did not do with one function of every formula called per vector)."""
    cases = []
    for rule in activations.RULES:
        if rule.name == "identity":
            continue
        params = [var("p")][:len(rule.params)]  # at most one setting (MAX_PARAMS) in the epoch
        statements, out = lower({"x": formula(rule, params)}, "vector", _vconst)
        cases.append((rule.code, rule.name, [
            "for r in range(nrows):", "    for v in range(v0, v1):", "        o = r * ld + v * VW",
            f"        {operand} = {load}", *[f"        {n} = {t}" for n, t in statements],
            "        " + store.format(out["x"])]))
    return cases


def _activations():
    head = ["    VW = vwidth(work)", "    like = work", "    p = vsplat(work, work[prm])"]
    act = _rows(lambda rule, params: rule.forward(SymMath, var("z"), *params), "z", "vload(work, ybase + o)",
                "vstore(work, ybase + o, vmul({}, vload(work, mbase + v * VW)))")
    grad = _rows(lambda rule, params: rule.derivative(SymMath, var("v"), *params), "v", "vload(work, vbase + o)",
                 "vstore(work, dbase + o, vmul(vload(work, dbase + o), {}))")
    identity = ["for r in range(nrows):", "    for v in range(v0, v1):", "        o = r * ld + v * VW",
                "        vstore(work, ybase + o, vmul(vload(work, ybase + o), vload(work, mbase + v * VW)))"]
    return ["@njit(**_JIT)", "def act_rows(work, ybase, ld, nrows, v0, v1, code, prm, mbase):",
            '    """Y = act(Y) · mask in place on vectors v0:v1 of rows 0:nrows (the mask keeps the padding',
            '    at 0); ``prm``: where the activation\'s setting is in work."""',
            *head, *_branches(act, 4, fallback=identity), "", "",
            "@njit(**_JIT)", "def grad_rows(work, vbase, dbase, ld, nrows, v0, v1, code, prm):",
            '    """dZ = dY · act\' in place on vectors v0:v1 of rows 0:nrows, act\' from vbase: the output Y, or',
            '    the input Z where the entry needs Z."""',
            *head, *_branches(grad, 4)]


def _apply_step(summed=False):
    """``apply_step``; ``summed``: ``apply_summed_step``, whose gradient is the sum of ``parts``
    blocks ``gstride`` apart in G (the ranks' slots), added in their order as it goes."""
    cases = []
    load = "vload(G, gbase + (m * nv + v) * VW)"
    for rule in optimizers.RULES:
        inputs = {name: var(f"h_{name}") for name in rule.inputs}
        slots = {name: var(f"s_{name}") for name in rule.slots}
        w, new = rule.update(SymMath, var("w"), var("g"), slots, inputs)
        statements, out = lower({"w": w, **new}, "vector", _vconst)
        body = [f"h_{name} = vsplat(like, {'wd' if name == 'weight_decay' else f'h[{HY_IN + i}]'})"
                for i, name in enumerate(rule.inputs)]
        body += ["for m in range(rows):", "    for v in range(nv):",
                 "        o = pbase + m * ldp + v * VW",
                 f"        g = {load}",
                 *(["        for k in range(1, parts):",
                    f"            g = vadd(g, {load.replace('gbase', 'gbase + k * gstride')})"] if summed else []),
                 "        w = vload(P, o)",
                 *[f"        s_{name} = vload(S{i + 1}, o)" for i, name in enumerate(rule.slots)],
                 *[f"        {n} = {t}" for n, t in statements],
                 *[f"        vstore(S{i + 1}, o, {out[name]})" for i, name in enumerate(rule.slots)],
                 f"        vstore(P, o, {out['w']})"]
        cases.append((rule.code, rule.name, body))
    if summed:
        head = ["def apply_summed_step(P, S1, S2, pbase, ldp, G, gbase, gstride, parts, rows, nv, h, decays):",
                '    """``apply_step`` from the gradient Σ_k G[gbase + k·gstride + ...] over k < parts."""']
    else:
        cases.append((OPT_GRADIENT, "the gradient itself, into S1", [
            "for m in range(rows):", "    for v in range(nv):",
            f"        vstore(S1, pbase + m * ldp + v * VW, {load})"]))
        head = ["def apply_step(P, S1, S2, pbase, ldp, G, gbase, rows, nv, h, decays):",
                '    """The optimizer step on the block P[rows, nv vectors] from the gradient block G (rows of nv',
                '    vectors, contiguous); ``decays``: weight decay applies here (weights, not biases)."""']
    return ["@njit(**_JIT)", *head,
            "    VW = vwidth(P)",
            "    like = P",
            "    code = int(h[HY_KIND])",
            f"    wd = h[{HY_IN + 1}] if decays else 0.0",
            *_branches(cases, 4)]


def _step_scalars():
    cases = []
    for rule in optimizers.RULES:
        if not rule.step_scalars:
            continue
        h = {name: var(f"h[{HY_IN + i}]") for i, name in enumerate(rule.inputs)}
        first = len(rule.inputs) - len(rule.step_scalars)
        body = []
        for k, (name, formula) in enumerate(rule.step_scalars):
            statements, out = lower({"s": formula(h, var("t"))}, "python")
            body += [f"{n} = {t}" for n, t in statements] + [f"h[{HY_IN + first + k}] = {out['s']}"]
        cases.append((rule.code, rule.name, body))
    return ["@njit(**_JIT)", "def step_scalars(h, t):",
            '    """The rule\'s per-step scalars for step t (from 1), into h."""',
            "    code = int(h[HY_KIND])", *_branches(cases, 4, fallback=["return"])]


def constants():
    """The codes the template names, from the tables: one place."""
    lines = [f"ACT_{rule.name.upper()} = {rule.code}" for rule in activations.RULES]
    lines += [f"LOSS_{name.upper()} = {code}" for name, code in LOSS_CODES.items()]
    lines += [f"OPT_{rule.name.upper()} = {rule.code}" for rule in optimizers.RULES]
    lines += [f"OPT_GRADIENT = {OPT_GRADIENT}"]
    lines += [f"HY_KIND, HY_T0, HY_IN, HY_LR, HY_WD, H_WIDTH = {HY_KIND}, {HY_T0}, {HY_IN}, {HY_IN}, {HY_IN + 1}, "
              f"{H_WIDTH}",
              f"HY_DEN, HY_WEIGHT, HY_WSCALE = {HY_DEN}, {HY_WEIGHT}, {HY_WSCALE}"]
    return "\n".join(lines)


def source():
    """The generated functions' text."""
    return "\n\n\n".join("\n".join(block) for block in (_activations(), _apply_step(), _apply_step(summed=True),
                                                        _step_scalars())) + "\n"
