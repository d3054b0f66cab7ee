"""The op tables: every entry renders for every path, the CUDA it gives compiles (where nvcc is),
and a formula outside the vocabulary fails when a path is built, never silently."""
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import fastnn
from fastnn.ops import activations, optimizers
from fastnn.ops.symbolic import ArrayMath, SymMath, lower, render, var


@pytest.mark.parametrize("dialect", ["python", "vector", "cuda"])
def test_every_entry_renders_in_every_dialect(dialect):
    for rule in activations.RULES:
        params = [var(f"p{i}") for i in range(len(rule.params))]
        for formula, x in ((rule.forward, "z"), (rule.derivative, "v")):
            tree = formula(SymMath, var(x), *params)
            if not isinstance(tree, float):
                assert render(tree, dialect)
    for rule in optimizers.RULES:
        w, new = rule.update(SymMath, var("w"), var("g"), {s: var(f"s_{s}") for s in rule.slots},
                             {h: var(f"h_{h}") for h in rule.inputs})
        statements, results = lower({"w": w, **new}, dialect)
        assert set(results) == {"w", *rule.slots}


def test_codes_are_positions_in_one_table():
    assert fastnn.ACTIVATIONS == tuple(rule.name for rule in activations.RULES)
    assert [rule.code for rule in activations.RULES] == list(range(len(activations.RULES)))
    assert [rule.code for rule in optimizers.RULES] == list(range(len(optimizers.RULES)))
    assert {cls.act for cls in fastnn.layers.ACTIVATION_LAYERS.values()} == set(fastnn.ACTIVATIONS)


def test_a_formula_that_branches_in_python_is_refused():
    with pytest.raises(TypeError, match="use m.where"):
        (lambda m, z: z if z > 0 else 0.0)(SymMath, var("z"))
    with pytest.raises(ValueError, match="per-step scalars"):
        render(var("a") ** var("b"), "vector")


def test_the_array_namespace_keeps_the_dtype():
    for dtype in (np.float32, np.float64):
        Z = np.linspace(-3, 3, 12, dtype=dtype).reshape(3, 4)
        for rule in activations.RULES:
            params = [0.1] * len(rule.params)
            Y = rule.forward(ArrayMath(np, Z), Z, *params)
            d = rule.derivative(ArrayMath(np, Z), Z, *params)
            assert np.asarray(Y).dtype == dtype
            assert isinstance(d, float) or d.dtype == dtype


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed here")
def test_the_generated_cuda_compiles(tmp_path, monkeypatch):
    """The raw module and the ElementwiseKernel bodies, wrapped in kernels, through nvcc -ptx: the
    CUDA the tables give is valid C++ for float and double (CuPy's NVRTC compiles the same text)."""
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))  # the sources need no GPU
    from fastnn.backends.cupy import kernels, ops_source

    parts = [ops_source.DEVICE]
    for T in ("float", "double"):
        parts.append(f'extern "C" __global__ void acts_{T}({T}* y, const {T}* z, int act, {T} p) '
                     f'{{ int i = threadIdx.x; y[i] = fastnn_act<{T}>(z[i], act, p) + '
                     f'fastnn_act_backward<{T}>(z[i], y[i], act, p); }}')
        for rule in optimizers.RULES:
            for in_graph in (False, True):
                ins, outs, body = ops_source.update(rule, in_graph)
                args = [p.replace("raw float64", "const double*").replace("float64", "double").replace("T ", f"{T} ")
                        for p in ins.split(", ")]
                args[0] = f"const {T}* dw_p"
                refs = [p.split()[1] for p in outs.split(", ")]
                parts.append(f'extern "C" __global__ void upd_{rule.name}_{int(in_graph)}_{T}({", ".join(args)}, '
                             + ", ".join(f"{T}* {r}_p" for r in refs) + f") {{ typedef {T} T; {T} dw = dw_p[threadIdx.x]; "
                             + " ".join(f"{T}& {r} = {r}_p[threadIdx.x];" for r in refs) + "\n" + body + "\n}")
    (tmp_path / "ops.cu").write_text("\n".join(parts))
    for dtype in kernels.DTYPES:
        (tmp_path / f"raw_{dtype}.cu").write_text(kernels.source(dtype))
    for name in ["ops.cu"] + [f"raw_{dtype}.cu" for dtype in kernels.DTYPES]:
        result = subprocess.run(["nvcc", "-ptx", "-o", str(tmp_path / (name + ".ptx")), str(tmp_path / name)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
