"""Markdown tables of a saved run: medians, ratios against the peers, GFLOP/s, and the speed targets.

    python -m bench.report .benchmarks/latest/bench.json
    python -m bench.report torch.json jax.json fastnn-numpy.json ...   # pieces of one run
    python -m bench.report --check .benchmarks/quick/bench.json        # exit 1 if a target is missed

Ratios read "×PyTorch = PyTorch's median ÷ this entry's median": above 1 means
faster than PyTorch. The inputs are taken as *one* run (the report says so when
they disagree on the OpenBLAS variables); report two runs with two commands.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .workloads import (IMPLS, MATMUL_DTYPES, NETS, OPENBLAS_VARS, QUIET_SHARE, SGD_CASES,
                        matmul_products)

#: The peers of the training suites: column name -> the implementations whose best median it takes.
PEERS = {"PyTorch": ("torch",), "JAX best": ("jax",), "NumPy hand": ("numpy",),
         "fastnn numpy": ("fastnn-numpy",)}
MATMUL_PEER = "numpy"  # NumPy's own `@`, in its own process
#: (impl, variant) of NumPy's `@` timed in the numba process: the gemm target's reference where present
SAME_PROCESS_PEER = ("fastnn-numba", "numpy@")
#: The gemm target: fastnn numba's gemm takes at most this times NumPy's `@` at every shape.
GEMM_TOLERANCE = 1.10
#: The epoch targets: (net, batch) -> {peer: the speed-up fastnn numba's fit must reach over the
#: peer's best entry (PyTorch: best of 1 and 2 threads; JAX: best of step and scan)}.
EPOCH_TARGETS = {("A", 10): {"PyTorch": 10.0, "JAX": 2.5}, ("B", 10): {"JAX": 2.5},
                 ("B", 128): {"PyTorch": 1.5, "JAX": 1.2}, ("B", 1024): {"PyTorch": 1.5, "JAX": 1.2}}
TARGET_PEERS = {"PyTorch": ("torch",), "JAX": ("jax",)}
#: The GPU targets: batch of B -> the speed-up fastnn's cupy fit must reach over PyTorch eager on CUDA.
GPU_TARGETS = {10: 3.0, 128: 1.0}
PASS, FAIL, NA = "PASS", "FAIL", "n/a"


@dataclass
class Result:
    suite: str
    group: str
    impl: str
    variant: str
    label: str
    median: float
    best: float  # the fastest round: the peak's estimate (what the machine can do)
    rounds: int
    info: dict = field(repr=False)

    @property
    def gflops(self):
        return self.info["flops"] / self.median / 1e9 if self.info.get("flops") else None

    @property
    def order(self):
        return (list(IMPLS).index(self.impl) if self.impl in IMPLS else len(IMPLS), self.variant)


# ---- reading ---------------------------------------------------------------

def load(documents):
    """``(results, machines, runs)`` from pytest-benchmark JSON documents (merged or not)."""
    results, machines, runs = {}, [], []
    for doc in documents:
        run = doc.get("fastnn_run")
        if run:
            runs.append(run)
            machines += [p["machine"] for p in run.get("processes", []) if p.get("machine")]
        elif doc.get("machine_info", {}).get("fastnn"):
            machines.append(doc["machine_info"]["fastnn"])
        for bench in doc.get("benchmarks", []):
            info = bench.get("extra_info", {})
            if "impl" not in info:
                continue  # not one of this suite's entries
            result = Result(info.get("suite", ""), bench["group"], info["impl"], info.get("variant", ""),
                            info.get("label", info["impl"]), bench["stats"]["median"], bench["stats"]["min"],
                            bench["stats"]["rounds"], info)
            results[(result.group, result.impl, result.variant)] = result  # a later file wins
    return list(results.values()), machines, runs


def _by_group(results, suite):
    groups = {}
    for result in results:
        if result.suite == suite:
            groups.setdefault(result.group, []).append(result)
    return {group: sorted(rows, key=lambda r: r.order) for group, rows in groups.items()}


def _best(rows, impls):
    candidates = [row for row in rows if row.impl in impls]
    return min(candidates, key=lambda row: row.median) if candidates else None


# ---- formatting --------------------------------------------------------------

def _time(seconds):
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _ratio(value):
    return "—" if value is None else f"{value:.2f}×"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


# ---- sections -----------------------------------------------------------------

def _header(results, machines, runs):
    first = machines[0] if machines else {}
    lines = ["# fastnn benchmarks", ""]
    dates = [run.get("started") for run in runs if run.get("started")]
    lines.append(f"- date: {', '.join(dates) if dates else 'unknown (raw pytest-benchmark files)'}")
    if first:
        lines.append(f"- machine: {first.get('cpu_model')}, {first.get('cores')} cores, Python {first.get('python')}")
        versions = {}
        for machine in machines:
            for name, version in machine.get("versions", {}).items():
                versions.setdefault(name, version)
        lines.append("- versions: " + ", ".join(f"{name} {v}" for name, v in versions.items() if v))
        blas = {f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')} kernels)"
                for machine in machines for b in machine.get("blas", [])}
        lines.append("- BLAS of NumPy/SciPy: " + ("; ".join(sorted(blas)) or "unknown"))
    settings = {tuple((name, (m.get("openblas_env") or {}).get(name)) for name in OPENBLAS_VARS) for m in machines}
    for setting in sorted(settings, key=str):
        text = ", ".join(f"{name}={value}" if value is not None else f"{name} unset" for name, value in setting)
        lines.append(f"- OpenBLAS variables: {text}")
    if len(settings) > 1:
        lines.append("- **warning: these results mix runs with different OpenBLAS variables**")
    for run in runs:
        lines.append(f"- command: `{run['command']}` (OpenBLAS variables: {run.get('openblas_mode')}; "
                     "one process per implementation)")
        if run.get("quick"):
            lines.append(f"- **quick run**: {run['quick']} Good for a first look; the full run "
                         "(`python -m bench.run`) is the one to quote")
        if run.get("passes", 1) > 1:
            lines.append(f"- {run['passes']} passes over the implementations in alternating order; an entry's "
                         "median is the geometric mean of its passes' medians (machine drift favours no one)")
        if "agreement" in run:
            agreement = run["agreement"]
            verdict = "ok" if agreement["exit_code"] == 0 else "**FAILED**"
            lines.append(f"- peers compute the same training (bench/test_peers_agree.py): {verdict}, "
                         f"{agreement['summary']}")
        failed = [p["impl"] for p in run.get("processes", []) if p.get("exit_code")]
        if failed:
            lines.append(f"- **processes that failed: {', '.join(failed)}**")
    if not runs:
        commands = sorted({m.get("command", "?") for m in machines})
        lines += [f"- command: `{command}`" for command in commands]
    shares = {}
    for m in machines:  # the worst pass of each process
        if m.get("others_cpu_share") is not None:
            shares[_impls(m)] = max(shares.get(_impls(m), 0.0), m["others_cpu_share"])
    if shares:
        noisy = max(shares.values()) > QUIET_SHARE
        lines.append(("- **" if noisy else "- ") + "CPU share other processes took during each process: "
                     + ", ".join(f"{impls} {share:.0%}" for impls, share in shares.items())
                     + (" — timings disturbed: rerun on a quiet machine**" if noisy else ""))
    peak = _peak(results)
    if peak:
        best, rows = peak
        lines.append(f"- float32 GEMM peak (2048³ sgemm, fastest round, best library): {best:.0f} GFLOP/s — "
                     + ", ".join(f"{row.label} {_peak_gflops(row):.0f} (median {row.gflops:.0f})"
                                 for row in rows))
    lines.append("- ratios: ×peer = the peer's median ÷ this entry's median (above 1: faster than the peer)")
    lines.append("- GFLOP/s = 6 × parameters × samples ÷ median (the usual count: forward 2, backward 4; it "
                 "counts the first layer's dX, which training needn't compute, so it can exceed the GEMM peak)")
    return lines


def _impls(machine):
    impls = machine.get("impls", "all")
    return impls if isinstance(impls, str) else ",".join(impls)


def _peak(results):
    """``(GFLOP/s, rows)``: each library's fastest 2048³ sgemm round; the best of them is the peak."""
    rows = sorted((r for r in results if r.suite == "peak"), key=lambda r: r.best)
    return (_peak_gflops(rows[0]), rows) if rows else None


def _peak_gflops(row):
    return row.info["flops"] / row.best / 1e9


def _training_section(results, suite, title, peak):
    groups = _by_group(results, suite)
    if not groups:
        return []
    lines = ["", f"## {title}"]
    for net_name, batch in SGD_CASES:
        name = f"{suite} {net_name} b={batch}"
        rows = groups.get(name)
        if not rows:
            continue
        peers = {column: _best(rows, impls) for column, impls in PEERS.items()}
        header = ["entry", "median", "first call (compile incl.)"] + [f"×{column}" for column in peers] + ["GFLOP/s"]
        if peak:
            header.append("% peak")
        table = []
        for row in rows:
            cells = [row.label + (f" [{row.info['path']}]" if row.info.get("path") else ""),
                     _time(row.median) + (f" ({row.rounds} round{'s' if row.rounds > 1 else ''})"
                                          if row.rounds < 3 else ""),
                     _time(row.info.get("first_call_s"))]
            cells += [_ratio(peer.median / row.median) if peer else "—" for peer in peers.values()]
            cells.append(f"{row.gflops:.1f}" if row.gflops else "—")
            if peak:
                cells.append(f"{100 * row.gflops / peak:.1f}%" if row.gflops else "—")
            table.append(cells)
        lines += ["", f"### {name} — {NETS[net_name].describe()}", ""] + _table(header, table)
    return lines


def _matmul_section(results):
    groups = _by_group(results, "matmul")
    if not groups:
        return []
    lines = ["", "## Matrix products (medians; ratios are times ÷ NumPy's `@`, lower is faster)"]
    impls = sorted({r.impl for rows in groups.values() for r in rows}, key=lambda i: list(IMPLS).index(i))
    for dtype in MATMUL_DTYPES:
        table = []
        for product in matmul_products():
            group = groups.get(f"matmul {dtype} {product.key} ({product.formula})", [])
            rows = {r.impl: r for r in group if (r.impl, r.variant) != SAME_PROCESS_PEER}
            if not rows:
                continue
            numpy_row = rows.get(MATMUL_PEER)
            beside = _same_process_peer(group)
            cells = [f"{product.key} ({product.formula})"] + [_time(rows[i].median) if i in rows else "—"
                                                              for i in impls]
            ours = rows.get("fastnn-numba")
            cells.append(_ratio(ours.median / beside.median) if beside and ours else "—")
            cells.append(_ratio(ours.info.get("vs_numpy_interleaved")) if ours else "—")
            for impl in ("fastnn-numba", "fastnn-numpy"):
                ok = numpy_row and impl in rows
                cells.append(_ratio(rows[impl].median / numpy_row.median) if ok else "—")
            best = min(rows.values(), key=lambda r: r.median)
            cells.append(f"{best.gflops:.0f} ({best.label})")
            table.append(cells)
        if table:
            header = ["product m×k×n"] + [IMPLS_SHORT.get(i, i) for i in impls] + \
                     ["numba ÷ NumPy@ (same process)", "numba ÷ NumPy@ (in turns)", "numba ÷ NumPy@",
                      "fastnn numpy ÷ NumPy@",
                      "best GFLOP/s"]
            lines += ["", f"### {dtype}", ""] + _table(header, table)
    return lines


IMPLS_SHORT = {"fastnn-numpy": "fastnn numpy", "fastnn-numba-layers": "fastnn numba layer by layer",
               "fastnn-numba": "fastnn numba", "numpy": "NumPy @", "torch": "PyTorch", "jax": "JAX"}


# ---- the targets -----------------------------------------------------------------

@dataclass
class Verdict:
    """One target, named in words, what the run measured for it, and PASS / FAIL / n/a."""

    target: str
    measured: str
    result: str


def _case(net_name, batch):
    return f"{net_name}/{batch}"


def targets(results):
    """Every CPU target, checked against ``results``; GPU targets where the run has GPU epochs."""
    epochs = _by_group(results, "epoch")
    verdicts = []
    for (net_name, batch), needs in EPOCH_TARGETS.items():
        rows = epochs.get(f"epoch {net_name} b={batch}", [])
        ours = _best(rows, ("fastnn-numba",))
        for peer_name, need in needs.items():
            peer = _best(rows, TARGET_PEERS[peer_name])
            what = f"fastnn numba ≥ {need:g}× {peer_name} at {_case(net_name, batch)}"
            if ours is None or peer is None:
                missing = "fastnn numba" if ours is None else peer_name
                verdicts.append(Verdict(what, f"{missing} not measured", NA))
                continue
            ratio = peer.median / ours.median
            verdicts.append(Verdict(what, f"{ratio:.2f}× ({_time(ours.median)} vs {peer.label} "
                                          f"{_time(peer.median)})", PASS if ratio >= need else FAIL))
    verdicts.append(_gemm_target(results))
    for impl in ("fastnn-numba", "fastnn-numba-layers"):
        verdicts.append(_ahead_target(epochs, impl))
    verdicts += _gpu_targets(results)
    return verdicts


def _targets_section(verdicts):
    table = [(v.target, v.measured, v.result if v.result != FAIL else f"**{FAIL}**") for v in verdicts]
    return ["", "## Targets", "",
            "Ratios are the peer's median ÷ fastnn's (above 1: fastnn is faster). n/a: an entry was not "
            "measured in this run; it neither passes nor fails. How far these ratios move between runs: "
            "bench/README.md.", ""] + _table(["target", "measured", "result"], table)


def _same_process_peer(rows):
    return next((r for r in rows if (r.impl, r.variant) == SAME_PROCESS_PEER), None)


def _gemm_target(results):
    """numba's gemm against NumPy's `@`: timed in turns with it where the run did, else the
    benchmark beside it (same process), else NumPy's own process."""
    what = f"fastnn numba's gemm within {round((GEMM_TOLERANCE - 1) * 100)}% of NumPy's `@` at every shape"
    ratios = []
    for group, rows in _by_group(results, "matmul").items():
        ours = next((r for r in rows if r.impl == "fastnn-numba" and not r.variant), None)
        peer = _same_process_peer(rows) or next((r for r in rows if r.impl == MATMUL_PEER), None)
        if ours and ours.info.get("vs_numpy_interleaved"):
            ratios.append((ours.info["vs_numpy_interleaved"], group))
        elif ours and peer:
            ratios.append((ours.median / peer.median, group))
    if not ratios:
        return Verdict(what, "matrix products not measured (the matmul suite)", NA)
    worst, group = max(ratios)
    over = sum(ratio > GEMM_TOLERANCE for ratio, _ in ratios)
    return Verdict(what, f"worst {worst:.2f}× ({group.removeprefix('matmul ')}); {over} of {len(ratios)} "
                         "shapes over", PASS if over == 0 else FAIL)


def _ahead_target(epochs, impl):
    what = f"{IMPLS_SHORT[impl]} faster than fastnn numpy at every epoch case"
    pairs = []
    for net_name, batch in SGD_CASES:
        rows = epochs.get(f"epoch {net_name} b={batch}", [])
        ours, base = _best(rows, (impl,)), _best(rows, ("fastnn-numpy",))
        if ours and base:
            pairs.append((base.median / ours.median, _case(net_name, batch)))
    if not pairs:
        missing = IMPLS_SHORT["fastnn-numpy"] if any(_best(r, (impl,)) for r in epochs.values()) \
            else IMPLS_SHORT[impl]
        return Verdict(what, f"{missing} not measured", NA)
    text = ", ".join(f"{case} {ratio:.2f}×" for ratio, case in pairs)
    return Verdict(what, text, PASS if all(ratio > 1 for ratio, _ in pairs) else FAIL)


def _gpu_targets(results):
    groups = _by_group(results, "gpu-epoch")
    if not groups:
        return []  # the GPU suite did not run: its targets are not this report's business
    verdicts = []
    for batch, need in GPU_TARGETS.items():
        rows = groups.get(f"gpu epoch B b={batch}", [])
        ours, torch = _best(rows, ("fastnn-cupy",)), _best(rows, ("torch-cuda",))
        what = f"fastnn cupy ≥ {need:g}× PyTorch eager CUDA at {_case('B', batch)}"
        if ours and torch:
            ratio = torch.median / ours.median
            verdicts.append(Verdict(what, f"{ratio:.2f}× ({_time(ours.median)} vs {_time(torch.median)})",
                                    PASS if ratio >= need else FAIL))
        else:
            verdicts.append(Verdict(what, ("fastnn cupy" if ours is None else "PyTorch CUDA") + " not measured",
                                    NA))
    return verdicts


def check(verdicts):
    """``(exit code, message)``: 1 and the missed targets if any measured target failed, else 0."""
    failed = [v for v in verdicts if v.result == FAIL]
    measured = [v for v in verdicts if v.result != NA]
    if failed:
        return 1, (f"{len(failed)} of {len(measured)} measured targets missed: "
                   + "; ".join(f"{v.target} (measured {v.measured})" for v in failed))
    if not measured:
        return 0, f"no target could be checked: all {len(verdicts)} are n/a (their entries were not measured)"
    skipped = len(verdicts) - len(measured)
    return 0, f"all {len(measured)} measured targets met" + (f" ({skipped} n/a)" if skipped else "")


# ---- GPU -------------------------------------------------------------------------

def _gpu_section(results):
    """bench/test_gpu.py: fastnn's cupy backend beside PyTorch eager on CUDA (its targets are in ## Targets)."""
    groups = _by_group(results, "gpu-epoch")
    if not groups:
        return []
    lines = ["", "## GPU: one epoch of B, 60,000 MNIST-shaped samples (float32)"]
    for batch in GPU_TARGETS:
        rows = groups.get(f"gpu epoch B b={batch}", [])
        if not rows:
            continue
        torch = _best(rows, ("torch-cuda",))
        table = [[row.label, _time(row.median), _time(row.info.get("first_call_s")),
                  _ratio(torch.median / row.median) if torch else "—"] for row in rows]
        lines += ["", f"### B b={batch}", ""] + _table(["entry", "median", "first call", "×PyTorch CUDA"], table)
    return lines


# ---- the headline table ------------------------------------------------------------

SUMMARY_COLUMNS = {"fastnn numba": ("fastnn-numba",), "numba layer by layer": ("fastnn-numba-layers",),
                   "fastnn numpy": ("fastnn-numpy",), "NumPy by hand": ("numpy",), "PyTorch": ("torch",),
                   "JAX": ("jax",)}


def _summary_table(results, peak):
    """One row per epoch case: fastnn's entries and the best of each peer (the README's table)."""
    groups = _by_group(results, "epoch")
    header = ["case"] + list(SUMMARY_COLUMNS) + ["×PyTorch", "×JAX", "GFLOP/s (% peak)"]
    table = []
    for net_name, batch in SGD_CASES:
        rows = groups.get(f"epoch {net_name} b={batch}")
        if not rows:
            continue
        best = {column: _best(rows, impls) for column, impls in SUMMARY_COLUMNS.items()}
        ours = best["fastnn numba"]
        cells = [f"{net_name}, batch {batch}"] + [_time(row.median) if row else "—" for row in best.values()]
        for peer in ("PyTorch", "JAX"):
            cells.append(_ratio(best[peer].median / ours.median) if ours and best[peer] else "—")
        gflops = ours.gflops if ours else None
        if gflops and peak:
            cells.append(f"{gflops:.0f} ({100 * gflops / peak[0]:.0f}%)")
        else:
            cells.append(f"{gflops:.0f}" if gflops else "—")
        table.append(cells)
    return _table(header, table) if table else []


def summary(documents):
    """The README's table alone."""
    results, _, _ = load(documents)
    return "\n".join(_summary_table(results, _peak(results))) + "\n"


def _summary_section(results, peak):
    table = _summary_table(results, peak)
    if not table:
        return []
    return ["", "## One epoch, 60,000 MNIST-shaped samples (float32): fastnn beside the best of each peer", "",
            "Medians. PyTorch and NumPy by hand: best of 1 and 2 threads; JAX: best of a jitted step per batch "
            "and the whole epoch in `lax.scan`. ×peer = the peer's median ÷ fastnn numba's."
            + ("" if peak else " This run has no GEMM peak (suite `peak`), so GFLOP/s stands without a % of it."),
            ""] + table


# ---- putting it together --------------------------------------------------------

def render(documents):
    results, machines, runs = load(documents)
    peak = _peak(results)
    peak_gflops = peak[0] if peak else None
    lines = _header(results, machines, runs)
    lines += _summary_section(results, peak)
    lines += _targets_section(targets(results))
    lines += _training_section(results, "epoch", "One epoch, 60,000 MNIST-shaped samples (float32): every entry",
                               peak_gflops)
    lines += _training_section(results, "step", "One mini-batch SGD step (backprop + update)", peak_gflops)
    lines += _matmul_section(results)
    lines += _gpu_section(results)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="pytest-benchmark JSON files (bench.run's bench.json)")
    parser.add_argument("--out", help="also write the Markdown here")
    parser.add_argument("--summary", action="store_true",
                        help="only the epoch table of the README (fastnn beside the best of each peer)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a measured target is missed (and say which); targets whose "
                             "entries were not measured are n/a and do not fail")
    args = parser.parse_args(argv)
    documents = []
    for name in args.files:
        try:
            documents.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as exc:
            sys.exit(f"bench.report: cannot read {name}: {exc}")
    text = summary(documents) if args.summary else render(documents)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    if args.check:
        code, message = check(targets(load(documents)[0]))
        print(f"bench.report: check: {message}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
