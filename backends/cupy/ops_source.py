"""CUDA source of the element-wise ops, generated from the op tables (``fastnn.ops``); needs no CuPy.

- ``DEVICE``: ``fastnn_act(z, act, p)`` and ``fastnn_act_backward(v, dy, act, p)`` (``v``: the output
  Y, or the input Z where the entry needs Z; ``p``: the activation's setting), and the codes of the
  activations and losses as ``#define`` s, for the raw module and the ElementwiseKernels alike.
- ``update(rule, in_graph)``: an ElementwiseKernel's ``(in_params, out_params, body)`` for one
  step of an update rule; in a CUDA graph it also takes ``raw float64 s`` (the step count and the
  per-step scalars, kept on the device by ``tick``) and ``raw float64 stop``.
- ``tick(rule)``: a raw kernel that counts the step and computes the rule's per-step scalars.
"""
from __future__ import annotations

from fastnn.losses import CODES as LOSS_CODES
from fastnn.ops import activations
from fastnn.ops.symbolic import SymMath, lower, var


def _cases(pick):
    lines = []
    for rule in activations.RULES:
        if rule.name == "identity":
            continue
        statements, value = pick(rule)
        body = "".join(f"T {name} = {text}; " for name, text in statements)
        lines.append(f"    if (act == {rule.code}) {{ {body}return {value}; }}  /* {rule.name} */")
    return "\n".join(lines)


def _forward(rule):
    statements, out = lower({"y": rule.forward(SymMath, var("z"), *[var("p")][:len(rule.params)])}, "cuda")
    return statements, out["y"]


def _derivative(rule):
    statements, out = lower({"d": rule.derivative(SymMath, var("v"), *[var("p")][:len(rule.params)])}, "cuda")
    return statements, f"dy * {out['d']}"


DEVICE = "\n".join(
    [f"#define ACT_{rule.name.upper()} {rule.code}" for rule in activations.RULES]
    + [f"#define LOSS_{name.upper()} {code}" for name, code in LOSS_CODES.items()]
    + ["template <typename T> __device__ __forceinline__ T fastnn_act(T z, int act, T p) {",
       _cases(_forward), "    return z;", "}", "",
       "template <typename T> __device__ __forceinline__ T fastnn_act_backward(T v, T dy, int act, T p) {",
       _cases(_derivative), "    return dy;", "}", ""])


def update(rule, in_graph=False):
    """``(in_params, out_params, body)`` of the ElementwiseKernel for one step of ``rule``."""
    scalars = [name for name, _ in rule.step_scalars]
    settings = [name for name in rule.inputs if name not in scalars]
    names = {name: var(f"(T)h_{name}") for name in settings}
    names.update({name: var(f"(T)s[{1 + k}]" if in_graph else f"(T)h_{name}") for k, name in enumerate(scalars)})
    slots = {name: var(f"s_{name}") for name in rule.slots}
    w, new = rule.update(SymMath, var("w"), var("dw"), slots, names)
    statements, out = lower({"w": w, **new}, "cuda")
    body = [f"T {name} = {text};" for name, text in statements]
    body += [f"T r_{name} = {text};" for name, text in out.items()]  # all read before any is written
    body += [f"s_{name} = r_{name};" for name in rule.slots] + ["w = r_w;"]
    in_params = ["T dw"] + [f"float64 h_{name}" for name in (settings if in_graph else rule.inputs)]
    if in_graph:
        in_params += ["raw float64 s", "raw float64 stop"]
    text = "\n".join(body)
    if in_graph:
        text = "if (stop[0] < 0) {\n" + text + "\n}"
    return ", ".join(in_params), ", ".join(["T w"] + [f"T s_{name}" for name in rule.slots]), text


def tick(rule):
    """A raw kernel ``tick_<rule>(double* s, double h_<setting>...)``: s[0] += 1 (the step t), then the
    per-step scalars into s[1:] (a graph replays the same arguments, so they live on the device)."""
    settings = [name for name in rule.inputs if name not in dict(rule.step_scalars)]
    h = {name: var(f"h_{name}") for name in settings}
    lines = [f'extern "C" __global__ void tick_{rule.name}(double* s, '
             + ", ".join(f"double h_{name}" for name in settings) + ") {", "    s[0] += 1.0;",
             "    const double t = s[0];"]
    for k, (name, formula) in enumerate(rule.step_scalars):
        statements, out = lower({"x": formula(h, var("t"))}, "cuda", const=repr)
        lines += [f"    const double {n} = {text};" for n, text in statements]
        lines.append(f"    s[{1 + k}] = {out['x']};  /* {name} */")
    return "\n".join(lines + ["}"])
