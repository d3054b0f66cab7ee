"""The report's targets and ``--check`` on made-up results (not a benchmark; runs in a second).

``pytest bench/test_report.py``; under ``--benchmark-only`` it is skipped like the agreement check.
"""
import json

from . import report


def _bench(group, impl, median, variant="", suite="epoch", **info):
    return {"group": group, "fullname": f"{group}::{impl}-{variant}",
            "stats": {"median": median, "min": median, "rounds": 1},
            "extra_info": dict(impl=impl, variant=variant, label=impl, suite=suite, **info)}


def _epochs(times):
    """``{(net, batch): {impl or (impl, variant): median}}`` -> a pytest-benchmark document."""
    benchmarks = []
    for (net, batch), entries in times.items():
        for who, median in entries.items():
            impl, variant = who if isinstance(who, tuple) else (who, "")
            benchmarks.append(_bench(f"epoch {net} b={batch}", impl, median, variant))
    return {"benchmarks": benchmarks}


def _fast_everywhere(numba=0.1):
    """fastnn numba well ahead of every target; the layer path ahead of fastnn numpy."""
    return {case: {"fastnn-numba": numba, "fastnn-numba-layers": 0.5, "fastnn-numpy": 1.0,
                   ("torch", "1t"): 3.0, ("torch", "2t"): 4.0, ("jax", "scan"): 1.0}
            for case in report.SGD_CASES}


def _verdicts(doc):
    return {v.target: v for v in report.targets(report.load([doc])[0])}


def _check(tmp_path, doc, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    code = report.main(["--check", str(path)])
    return code, capsys.readouterr()


def test_all_measured_targets_pass(tmp_path, capsys):
    doc = _epochs(_fast_everywhere())
    verdicts = _verdicts(doc)
    assert verdicts["fastnn numba ≥ 2.5× JAX at B/10"].result == "PASS"
    assert verdicts["fastnn numba ≥ 10× PyTorch at A/10"].result == "PASS"  # best of 1t and 2t: 3.0 s
    gemm = next(v for v in verdicts.values() if "gemm" in v.target)
    assert gemm.result == "n/a"  # no matmul suite in the run: n/a, not a failure
    code, out = _check(tmp_path, doc, capsys)
    assert code == 0
    assert "all 9 measured targets met (1 n/a)" in out.err
    assert "## Targets" in out.out and "issue" not in out.out.lower()


def test_a_missed_target_fails_and_is_named(tmp_path, capsys):
    times = _fast_everywhere()
    times[("B", 1024)]["fastnn-numba"] = 0.9  # JAX 1.0 s: 1.11×, under 1.2×; PyTorch 3.0 s: 3.3×
    code, out = _check(tmp_path, _epochs(times), capsys)
    assert code == 1
    assert "1 of 9 measured targets missed: fastnn numba ≥ 1.2× JAX at B/1024 (measured 1.11×" in out.err
    assert "**FAIL**" in out.out


def test_missing_peer_is_na_and_does_not_fail(tmp_path, capsys):
    times = _fast_everywhere()
    for entries in times.values():
        del entries[("jax", "scan")]
    times[("A", 10)]["fastnn-numba-layers"] = 2.0  # the layer path behind fastnn numpy at A/10
    verdicts = _verdicts(_epochs(times))
    assert verdicts["fastnn numba ≥ 1.2× JAX at B/128"].result == "n/a"
    assert verdicts["fastnn numba ≥ 1.2× JAX at B/128"].measured == "JAX not measured"
    assert verdicts["fastnn numba layer by layer faster than fastnn numpy at every epoch case"].result == "FAIL"
    for entries in times.values():
        entries["fastnn-numba-layers"] = 0.5
    code, out = _check(tmp_path, _epochs(times), capsys)
    assert code == 0
    assert "all 5 measured targets met (5 n/a)" in out.err


def test_nothing_measured_passes_and_says_so(tmp_path, capsys):
    code, out = _check(tmp_path, {"benchmarks": []}, capsys)
    assert code == 0
    assert "no target could be checked" in out.err


def test_gpu_targets_only_with_gpu_results():
    assert not [v for v in _verdicts(_epochs(_fast_everywhere())).values() if "cupy" in v.target]
    doc = {"benchmarks": [_bench("gpu epoch B b=10", "fastnn-cupy", 0.1, suite="gpu-epoch"),
                          _bench("gpu epoch B b=10", "torch-cuda", 0.2, suite="gpu-epoch")]}
    verdicts = _verdicts(doc)
    assert verdicts["fastnn cupy ≥ 3× PyTorch eager CUDA at B/10"].result == "FAIL"  # 2×
    assert verdicts["fastnn cupy ≥ 1× PyTorch eager CUDA at B/128"].result == "n/a"
