"""ONNX export: a model as an ONNX graph that computes what ``predict_proba`` computes.

>>> fastnn.onnx_export.export_onnx(net, "model.onnx")     # needs: pip install 'fastnn[onnx]'
>>> session = onnxruntime.InferenceSession("model.onnx")
>>> P = session.run(None, {"input": X.astype(net.dtype)})[0]   # == net.predict_proba(X)

The graph takes ``input (batch, n_in)`` and gives ``output (batch, n_out)``, in the model's
dtype (float32 or float64), the batch dimension left free. A Dense layer is a ``Gemm`` whose W
and b are initializers named as in model files (``param.<i>.W``, ``param.<i>.b``). An
activation is ONNX's own op where ONNX Runtime has it in both dtypes (Sigmoid, Relu, Tanh,
Identity, PRelu for LeakyReLU; Softmax along axis 1); the others (GELU in its tanh form, SiLU,
and Softplus, which ONNX Runtime lacks in float64) are composed of primitive ops from their
formulas in ``fastnn.ops.activations``, the ones fastnn itself computes (any opset from 13).
The loss's output activation is appended as ``predict_proba`` applies it (softmax after
training with cross-entropy, unless the last layer is a Softmax). The model's JSON description
is kept in the ONNX metadata under ``"fastnn"``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .files import atomic_writer
from .io_npz import _describe, _param_arrays
from .layers import Activation, Dense, Dropout, Softmax, is_plain
from .ops import activations
from .ops.symbolic import SymMath, var

#: The opset written unless ``opset=`` says otherwise: ONNX Runtime runs it from version 1.12.
DEFAULT_OPSET = 17
#: The oldest opset the graph is valid in (Softmax along one axis; GreaterOrEqual).
MIN_OPSET = 13
INPUT, OUTPUT = "input", "output"
# activations ONNX has as one op computing the same function, which ONNX Runtime runs in float32
# and float64; the op's inputs after X are the activation's settings, as scalars of the model's
# dtype: PRelu's slope is LeakyReLU's alpha (LeakyRelu's alpha attribute would be float32 only)
_NATIVE = {"identity": "Identity", "sigmoid": "Sigmoid", "relu": "Relu", "tanh": "Tanh", "leaky_relu": "PRelu"}
# the formula vocabulary of fastnn.ops.symbolic as ONNX ops (log1p is composed: ONNX has none)
_PRIMITIVES = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "neg": "Neg", "exp": "Exp",
               "tanh": "Tanh", "sqrt": "Sqrt", "abs": "Abs", "maximum": "Max", "gt": "Greater",
               "ge": "GreaterOrEqual", "where": "Where"}


class _Graph:
    """The nodes and initializers of the graph being built; every value gets a fresh name."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, np.dtype(dtype)
        self.nodes, self.initializers, self._constants = [], [], {}

    def node(self, op, inputs, **attributes):
        """The name of the output of a new ``op`` node on ``inputs``."""
        name = f"{op.lower()}.{len(self.nodes)}"
        self.nodes.append(self.helper.make_node(op, list(inputs), [name], name=name, **attributes))
        return name

    def weight(self, name, array):
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array, self.dtype), name))
        return name

    def constant(self, value):
        """A scalar of the graph's dtype (broadcast by the ops), made once per value."""
        if value not in self._constants:
            self._constants[value] = self.weight(f"const.{len(self._constants)}", value)
        return self._constants[value]


def _formula(graph, tree, Z):
    """The nodes computing the expression ``tree`` (``fastnn.ops.symbolic``) of the variable ``Z``."""
    if tree.op == "var":
        return Z
    if tree.op == "const":
        return graph.constant(tree.args[0])
    args = [_formula(graph, arg, Z) for arg in tree.args]
    if tree.op == "log1p":
        return _log1p(graph, args[0])
    if tree.op not in _PRIMITIVES:
        raise ValueError(f"export_onnx: the formula operation {tree.op!r} has no ONNX form")
    return graph.node(_PRIMITIVES[tree.op], args)


def _log1p(graph, X):
    """log(1 + x) to a few ulps, also where 1 + x rounds to 1: x·log(u)/(u − 1) with u = 1 + x
    (Goldberg, "What every computer scientist should know about floating-point", thm. 4)."""
    U = graph.node("Add", [graph.constant(1.0), X])
    ratio = graph.node("Div", [graph.node("Log", [U]), graph.node("Sub", [U, graph.constant(1.0)])])
    return graph.node("Where", [graph.node("Equal", [U, graph.constant(1.0)]), X, graph.node("Mul", [X, ratio])])


def _activation(graph, act, params, X):
    rule = activations.rule(act)
    if act in _NATIVE:
        return graph.node(_NATIVE[act], [X, *(graph.constant(value) for value in params)])
    return _formula(graph, rule.forward(SymMath, var("z"), *params), X)


def _layers(graph, net, X):
    """The nodes of every layer, in order; a layer with no ONNX form raises, naming it."""
    dense = 0
    for i, layer in enumerate(net.layers):
        if is_plain(layer, Dense):
            X = graph.node("Gemm", [X, f"param.{dense}.W", f"param.{dense}.b"])  # (B, n_in) @ W + b
            dense += 1
        elif is_plain(layer, Activation):
            X = _activation(graph, layer.act, layer.params, X)
        elif is_plain(layer, Softmax):
            X = graph.node("Softmax", [X], axis=1)
        elif is_plain(layer, Dropout):
            pass  # the identity outside training, as in predict_proba
        else:
            raise ValueError(f"export_onnx: layer {i}, {layer!r} ({type(layer).__module__}."
                             f"{type(layer).__qualname__}), has no ONNX form; the exporter knows "
                             f"fastnn's own Dense, Softmax, Dropout and activation layers")
    return X


def _head(graph, net, X):
    """What ``predict_proba`` applies after the layers: the loss's output activation, unless the
    last layer already is it."""
    head = net.loss.output_activation if net.loss is not None else None
    if not head or net._last_activation() == head:
        return X
    if head == "softmax":
        return graph.node("Softmax", [X], axis=1)
    if head == "sigmoid":
        return graph.node("Sigmoid", [X])
    raise ValueError(f"export_onnx: the loss {net.loss!r} applies the output activation {head!r}, "
                     f"which has no ONNX form here (softmax and sigmoid have)")


def _opset(opset, latest):
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= latest:
        raise ValueError(f"export_onnx: opset must be an integer from {MIN_OPSET} to {latest} (the newest "
                         f"this onnx package knows), got {opset!r}")
    return int(opset)


def export_onnx(net, path: str | os.PathLike, opset: int | None = None) -> None:
    """Write ``net`` to ``path`` as an ONNX model computing ``net.predict_proba`` (see the module
    docstring); atomic. ``opset``: the ONNX opset (default ``DEFAULT_OPSET``, 17; 13 at least).

    >>> export_onnx(net, "model.onnx")

    A layer that is not fastnn's own Dense, Softmax or activation raises ``ValueError`` naming it.
    Needs the ``onnx`` package (``pip install 'fastnn[onnx]'``).
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install 'fastnn[onnx]'") from None
    from . import __version__

    opset = _opset(opset, onnx.defs.onnx_opset_version())
    graph = _Graph(helper, numpy_helper, net.dtype)
    for name, array in _param_arrays(net).items():
        graph.weight(name, array)
    Y = _head(graph, net, _layers(graph, net, INPUT))
    graph.nodes.append(helper.make_node("Identity", [Y], [OUTPUT], name=OUTPUT))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(net.dtype))
    body = helper.make_graph(
        graph.nodes, "fastnn", [helper.make_tensor_value_info(INPUT, elem, ["batch", net.n_in])],
        [helper.make_tensor_value_info(OUTPUT, elem, ["batch", net.n_out])], initializer=graph.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(body, opset_imports=opsets, producer_name="fastnn", producer_version=__version__)
    model.ir_version = helper.find_min_ir_version_for(opsets)  # the oldest runtime that reads this opset can
    helper.set_model_props(model, {"fastnn": json.dumps(_describe(net))})
    if model.ByteSize() > onnx.checker.MAXIMUM_PROTOBUF:
        raise ValueError(f"export_onnx: the model takes {model.ByteSize():,} bytes, more than one ONNX "
                         f"file holds (2 GiB, protobuf's limit)")
    onnx.checker.check_model(model, full_check=True)
    with atomic_writer(path) as f:
        f.write(model.SerializeToString())
