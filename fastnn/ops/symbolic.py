"""Element-wise formulas written once, rendered for every path.

An op's formula is a Python function of a *math namespace* ``m`` and its operands, e.g.
``lambda m, z: 1 / (1 + m.exp(-z))``. Called with :class:`ArrayMath` it computes on arrays (the
reference backend); called with :class:`Sym` operands it records an expression tree, which
:func:`render` prints as source for a kernel: numba scalars, numba SIMD vectors, or CUDA C.

The vocabulary every path implements (and nothing else may appear in a formula):
``+ - * /``, unary ``-``, ``>`` and ``>=`` (only inside ``m.where``), ``m.exp``, ``m.log1p``,
``m.tanh``, ``m.sqrt``, ``m.abs``, ``m.maximum`` (a NaN in its first operand stays NaN) and
``m.where(cond, a, b)``; and ``**`` in the per-step scalars of an optimizer (scalar paths only).
"""
from __future__ import annotations

import numpy as np

_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_FUNCTIONS = ("exp", "log1p", "tanh", "sqrt", "abs")


class Sym:
    """A node of an expression tree: ``op`` and its ``args`` (Sym nodes, names or numbers)."""

    __slots__ = ("op", "args")

    def __init__(self, op, *args):
        self.op, self.args = op, args

    def __repr__(self):
        return render(self, "python")

    # arithmetic records a node; a Python number becomes a constant of the operands' dtype
    def __add__(self, other): return Sym("add", self, _sym(other))
    def __radd__(self, other): return Sym("add", _sym(other), self)
    def __sub__(self, other): return Sym("sub", self, _sym(other))
    def __rsub__(self, other): return Sym("sub", _sym(other), self)
    def __mul__(self, other): return Sym("mul", self, _sym(other))
    def __rmul__(self, other): return Sym("mul", _sym(other), self)
    def __truediv__(self, other): return Sym("div", self, _sym(other))
    def __rtruediv__(self, other): return Sym("div", _sym(other), self)
    def __pow__(self, other): return Sym("pow", self, _sym(other))
    def __rpow__(self, other): return Sym("pow", _sym(other), self)
    def __neg__(self): return Sym("neg", self)
    def __gt__(self, other): return Sym("gt", self, _sym(other))
    def __ge__(self, other): return Sym("ge", self, _sym(other))
    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError("a formula cannot branch on a value in Python: use m.where(cond, a, b)")


def _sym(x):
    if isinstance(x, Sym):
        return x
    if isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool):
        return Sym("const", float(x))
    raise TypeError(f"a formula may combine numbers and operands only, got {type(x).__name__}")


def var(name):
    """An operand (a variable of the generated code)."""
    return Sym("var", name)


class SymMath:
    """The namespace that records: ``formula(SymMath, var("z"))`` is the formula's tree."""

    @staticmethod
    def where(cond, a, b):
        if not (isinstance(cond, Sym) and cond.op in ("gt", "ge")):
            raise TypeError("m.where takes a comparison (a > b or a >= b) as its condition")
        return Sym("where", cond, _sym(a), _sym(b))

    @staticmethod
    def maximum(a, b):
        return Sym("maximum", _sym(a), _sym(b))


for _name in _FUNCTIONS:
    setattr(SymMath, _name, staticmethod(lambda x, _op=_name: Sym(_op, _sym(x))))


class ArrayMath:
    """The namespace that computes, on arrays of ``xp`` (NumPy, CuPy, array-api-strict); a number
    a function needs as an array becomes one shaped and typed like ``like``."""

    def __init__(self, xp, like):
        self.xp, self.like = xp, like
        self._numpy = getattr(xp, "__name__", "").endswith("numpy")

    def _array(self, x):
        if hasattr(x, "shape"):
            return x
        if self._numpy:  # a scalar of like's dtype: the same numbers as a filled array, without the array
            return self.like.dtype.type(x)
        return self.xp.full_like(self.like, x)

    def exp(self, x):
        if self._numpy:  # exp(-z) is +inf for very negative z, and 1 / (1 + inf) is the right 0
            with np.errstate(over="ignore"):
                return self.xp.exp(x)
        return self.xp.exp(x)

    def log1p(self, x): return self.xp.log1p(x)
    def tanh(self, x): return self.xp.tanh(x)
    def sqrt(self, x): return self.xp.sqrt(x)
    def abs(self, x): return self.xp.abs(x)

    def maximum(self, a, b):
        return self.xp.maximum(self._array(a), self._array(b))

    def where(self, cond, a, b):
        if not hasattr(a, "shape") and not hasattr(b, "shape") and a == 1 and b == 0:
            return self.xp.astype(cond, self.like.dtype)  # an indicator (relu'): cond's 1s and 0s
        return self.xp.where(cond, self._array(a), self._array(b))


# ---- rendering -------------------------------------------------------------------
def render(tree, dialect, const=None):
    """Source text of ``tree`` for ``dialect``: ``"python"`` (numba scalars; ``const(value)`` writes
    a constant of the operands' dtype), ``"vector"`` (numba SIMD, the intrinsics of
    ``fastnn.backends.numba.simd``; ``const(value)`` writes a vector constant) or ``"cuda"``
    (C on ``T``)."""
    if dialect not in ("python", "vector", "cuda"):
        raise ValueError(f"unknown dialect {dialect!r}")
    if const is None:
        const = {"python": repr, "vector": lambda v: f"vsplat(like, {v!r})", "cuda": lambda v: f"(T){v!r}"}[dialect]
    return _Renderer(dialect, const).text(tree)


class _Renderer:
    def __init__(self, dialect, const):
        self.dialect, self.const = dialect, const

    def text(self, node):
        op, args = node.op, node.args
        if op == "var":
            return args[0]
        if op == "const":
            return self.const(args[0])
        if op == "where" and self.dialect == "vector":  # a compare-and-select intrinsic per comparison
            cond, a, b = args
            return (f"vwhere_{cond.op}({self.text(cond.args[0])}, {self.text(cond.args[1])}, "
                    f"{self.text(a)}, {self.text(b)})")
        texts = [self.text(a) for a in args]
        infix = self._infix(op, texts) if self.dialect != "vector" else None
        return infix or getattr(self, f"_{self.dialect}")(op, texts)

    @staticmethod
    def _infix(op, a):
        """What Python and C write alike (None for the rest)."""
        if op in _BINARY:
            return f"({a[0]} {_BINARY[op]} {a[1]})"
        if op == "neg":
            return f"(-{a[0]})"
        if op in ("gt", "ge"):
            return f"({a[0]} {'>' if op == 'gt' else '>='} {a[1]})"
        return None

    def _python(self, op, a):
        if op == "pow":
            return f"({a[0]} ** {a[1]})"
        if op == "where":
            return f"({a[1]} if {a[0]} else {a[2]})"
        if op == "maximum":  # NaN in the first operand stays NaN, as np.maximum
            return f"({a[1]} if {a[0]} < {a[1]} else {a[0]})"
        if op == "exp":
            return f"_exp({a[0]})"  # the kernels' exp (vectorisable in float32)
        if op == "abs":
            return f"abs({a[0]})"
        return f"np.{op}({a[0]})"

    def _vector(self, op, a):
        if op == "pow":
            raise ValueError("** is for per-step scalars, which are not vectors")
        if op in _BINARY:
            return f"v{op}({a[0]}, {a[1]})"
        if op == "neg":
            return f"vsub({self.const(0.0)}, {a[0]})"
        if op == "maximum":
            return f"vmax({a[0]}, {a[1]})"
        if op == "tanh":  # 1 - 2 / (e^2z + 1): exact limits ±1, no inf/inf
            one = self.const(1.0)
            return f"vsub({one}, vdiv({self.const(2.0)}, vadd(vexp(vadd({a[0]}, {a[0]})), {one})))"
        return f"v{op}({a[0]})"

    def _cuda(self, op, a):
        if op == "pow":
            return f"pow({a[0]}, {a[1]})"
        if op == "where":
            return f"({a[0]} ? {a[1]} : {a[2]})"
        if op == "maximum":
            return f"({a[0]} < {a[1]} ? {a[1]} : {a[0]})"
        if op == "abs":
            return f"fabs({a[0]})"
        return f"{op}({a[0]})"


def lower(outputs, dialect, const=None, prefix="t_"):
    """``(statements, results)``: ``outputs`` ({name: tree or number}) as straight-line code, each
    sub-tree used more than once (the same node object, e.g. Adam's new moment in its slot and in
    the step) computed once into a temporary. ``statements``: ``[(temporary, text)]`` in order;
    ``results``: {name: text} (a number as the dialect's constant)."""
    counts, order = {}, []

    def visit(node):
        if not isinstance(node, Sym) or node.op in ("var", "const"):
            return
        counts[id(node)] = counts.get(id(node), 0) + 1
        if counts[id(node)] == 1:
            for arg in node.args:
                visit(arg)
            order.append(node)  # post-order: operands first

    for tree in outputs.values():
        visit(tree)
    shared = [node for node in order if counts[id(node)] > 1 and node.op not in ("gt", "ge")]
    names = {id(node): f"{prefix}{k}" for k, node in enumerate(shared)}
    statements = []
    for node in shared:  # each rendered with the temporaries before it as plain names
        statements.append((names[id(node)], _with_names(node, names, dialect, const, top=True)))
    results = {name: _with_names(_sym(tree), names, dialect, const) for name, tree in outputs.items()}
    return statements, results


def _with_names(node, names, dialect, const, top=False):
    def replace(n):
        if not isinstance(n, Sym) or n.op in ("var", "const"):
            return n
        if id(n) in names and not (top and n is node):
            return Sym("var", names[id(n)])
        return Sym(n.op, *[replace(a) for a in n.args])
    return render(replace(node), dialect, const)
