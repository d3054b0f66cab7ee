"""Run the whole suite fairly: one pytest process per implementation, then one merged report.

    python -m bench.run --quick                  # the epoch table in about 3 minutes (see QUICK)
    python -m bench.run                          # everything, as CI runs (environment as is)
    python -m bench.run --check                  # ... and exit 1 if a speed target is missed
    python -m bench.run --openblas unset         # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed
    python -m bench.run --impl torch,jax --suite epoch --out /tmp/peers
    python -m bench.run --passes 1               # one pass (half the time; drift then biases)

Thread pools of different libraries in one process fight over the cores and
distort timings by up to 2×, so each implementation gets a process of its own.
Before timing, ``bench/test_peers_agree.py`` checks that every entry computes
the same training. Writes ``OUT/<impl>.json`` (one pytest-benchmark file each),
``OUT/bench.json`` (merged) and ``OUT/report.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from . import report
from .machine import busy_share
from .workloads import EPOCH_ROUNDS, IMPLS, OPENBLAS_VARS, QUIET_SHARE

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"\b(passed|failed|skipped|errors?|deselected|no tests ran)\b.* in [0-9.]+s")
#: What ``--quick`` sets (an option given explicitly wins): every epoch case and entry, each
#: epoch whole (60,000 samples), but one pass, one timed epoch after the warm-up, no GEMM peak,
#: matrix products or single steps, no agreement check.
QUICK = {"out": ".benchmarks/quick", "suite": "epoch", "passes": 1, "epoch_rounds": 1, "no_check": True}
FULL = {"out": ".benchmarks/latest", "suite": None, "passes": 2, "epoch_rounds": EPOCH_ROUNDS, "no_check": False}
SUITES = {  # suite -> pytest node ids
    "peak": ["bench/test_peak.py"],
    "matmul": ["bench/test_matmul.py"],
    "step": ["bench/test_sgd.py::test_step"],
    "epoch": ["bench/test_sgd.py::test_epoch"],
}


def _arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the epoch table in about 3 minutes on 2 cores: every entry and epoch case, "
                             "whole epochs, but one pass of one timed epoch each, no other suite and no "
                             f"agreement check; writes to {QUICK['out']} (options given explicitly win)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a measured speed target is missed (the report's Targets; "
                             "n/a ones do not count)")
    parser.add_argument("--out", help=f"output folder (default {FULL['out']}; --quick: {QUICK['out']})")
    parser.add_argument("--impl", default=",".join(IMPLS),
                        help="comma-separated implementations, one process each (default: all)")
    parser.add_argument("--suite",
                        help=f"comma-separated suites: {', '.join(SUITES)} (default: all; --quick: "
                             f"{QUICK['suite']})")
    parser.add_argument("--openblas", choices=("as-is", "unset"), default="as-is",
                        help="as-is: the environment as CI runs it; unset: remove "
                             f"{' and '.join(OPENBLAS_VARS)} for these processes only")
    parser.add_argument("--epoch-rounds", type=int,
                        help=f"timed epochs per epoch entry (default {FULL['epoch_rounds']}; --quick: "
                             f"{QUICK['epoch_rounds']})")
    parser.add_argument("--passes", type=int,
                        help="runs of every implementation, in alternating order, combined (default "
                             f"{FULL['passes']}: drift of the machine during the run favours no one; "
                             f"--quick: {QUICK['passes']})")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="MINUTES",
                        help="before each process, wait up to MINUTES for other processes to leave "
                             "the CPUs idle (a shared machine); default: don't wait")
    parser.add_argument("--no-agreement", "--no-check", dest="no_check", action="store_true", default=None,
                        help="skip the agreement check, bench/test_peers_agree.py (--quick skips it; "
                             "not the opposite of --check)")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.suite is None:
        args.suite = ",".join(SUITES)
    args.impl = _choices("--impl", args.impl, IMPLS)
    args.suite = _choices("--suite", args.suite, SUITES)
    return args


def _choices(flag, text, known):
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        sys.exit(f"{flag}: unknown or empty {', '.join(unknown) or text!r}; known: {', '.join(known)}")
    return chosen


def _environment(mode):
    env = dict(os.environ)
    if mode == "unset":
        for name in OPENBLAS_VARS:
            env.pop(name, None)
    return env


def _wait_quiet(minutes):
    """Wait up to ``minutes`` until other processes leave the CPUs idle; warn if they don't."""
    deadline = time.monotonic() + 60 * minutes
    busy = busy_share()
    while busy > QUIET_SHARE and time.monotonic() < deadline:
        busy = busy_share(5.0)
    if busy > QUIET_SHARE:
        print(f"bench.run: warning: other processes are using {busy:.0%} of the CPUs; "
              "timings will be disturbed", file=sys.stderr)


def _pytest(args, env, extra):
    """Run pytest in a fresh process; returns (exit code, seconds, summary line)."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *extra, *args.pytest_args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = (done.stdout + done.stderr).strip().splitlines()
    summary = [line for line in lines if SUMMARY.search(line)]
    # pytest's exit code 5: nothing collected (an implementation absent from the chosen suites)
    code = 0 if done.returncode == 5 else done.returncode
    if code:
        sys.stderr.write("\n".join(lines[-40:]) + "\n")
    return code, seconds, (summary or lines or [""])[-1].strip("= ")


def _combine_passes(benchmarks):
    """One result per benchmark from the passes: the geometric mean of their medians.

    The passes run the implementations in opposite orders, so a machine that speeds up or
    slows down during the run (these shared machines drift by 10-40% over half an hour)
    favours no one: each implementation's two positions average to the middle of the run.
    """
    by_name = {}
    for bench in benchmarks:
        by_name.setdefault(bench["fullname"], []).append(bench)
    combined = []
    for runs in by_name.values():
        first = dict(runs[0])
        if len(runs) > 1:
            stats = dict(first["stats"])
            medians = [r["stats"]["median"] for r in runs]
            stats["median"] = math.prod(medians) ** (1 / len(medians))
            stats["min"] = min(r["stats"]["min"] for r in runs)
            stats["rounds"] = sum(r["stats"]["rounds"] for r in runs)
            first["stats"] = stats
            first["extra_info"] = dict(first["extra_info"], pass_medians=medians)
            ratios = [r["extra_info"].get("vs_numpy_interleaved") for r in runs]
            if all(ratios):  # the gemm target's paired ratio: its geometric mean too
                first["extra_info"]["vs_numpy_interleaved"] = math.prod(ratios) ** (1 / len(ratios))
        combined.append(first)
    return combined


def main(argv=None):
    args = _arguments(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment(args.openblas)
    openblas = {name: env.get(name) for name in OPENBLAS_VARS}
    print(f"bench.run: OpenBLAS variables ({args.openblas}): {openblas}", file=sys.stderr)
    _wait_quiet(args.wait_quiet)
    run = {"command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
           "openblas_mode": args.openblas, "openblas_env": openblas, "passes": args.passes,
           "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "processes": []}
    if args.quick:
        run["quick"] = (f"{args.passes} pass{'es' if args.passes > 1 else ''}, {args.epoch_rounds} timed "
                        f"epoch{'s' if args.epoch_rounds > 1 else ''} per entry after the warm-up, suites "
                        f"{', '.join(args.suite)}"
                        + (", no agreement check." if args.no_check else "."))
    started = time.perf_counter()

    if not args.no_check:
        code, seconds, last = _pytest(args, env, ["bench/test_peers_agree.py", "-rs"])
        run["agreement"] = {"exit_code": code, "summary": last}
        print(f"bench.run: agreement check: {last} ({seconds:.0f} s)", file=sys.stderr)

    nodes = [node for suite in args.suite for node in SUITES[suite]]
    merged, order = None, list(args.impl)
    steps = [(k, impl) for k in range(args.passes) for impl in (order if k % 2 == 0 else order[::-1])]
    for i, (k, impl) in enumerate(steps, 1):
        path = out / (f"{impl}.json" if args.passes == 1 else f"{impl}.pass{k + 1}.json")
        path.unlink(missing_ok=True)
        if i > 1:
            _wait_quiet(args.wait_quiet)
        extra = [*nodes, "--benchmark-only", f"--impl={impl}", f"--epoch-rounds={args.epoch_rounds}",
                 f"--benchmark-json={path}", "-rs"]
        code, seconds, last = _pytest(args, env, extra)
        process = {"impl": impl, "pass": k + 1, "exit_code": code, "seconds": round(seconds, 1), "summary": last}
        run["processes"].append(process)
        text = path.read_text() if path.exists() else ""
        if text.strip():  # pytest-benchmark leaves an empty file when everything skipped
            data = json.loads(text)
            process["machine"] = data["machine_info"].get("fastnn", {})
            share = process["machine"].get("others_cpu_share")
            if share is not None:
                last += f"; other processes took {share:.0%} of the CPUs meanwhile"
            if merged is None:
                merged = data
            else:
                merged["benchmarks"] += data["benchmarks"]
        print(f"bench.run: [{i}/{len(steps)}] {impl} (pass {k + 1}): {last} ({seconds:.0f} s)", file=sys.stderr)
    if merged is not None:
        merged["benchmarks"] = _combine_passes(merged["benchmarks"])
    if merged is None:
        sys.exit("bench.run: no benchmark results were written")
    merged["fastnn_run"] = run
    (out / "bench.json").write_text(json.dumps(merged, indent=1))
    text = report.render([merged])
    (out / "report.md").write_text(text)
    print(text)
    written = [out / "bench.json", out / "report.md"]
    size = sum(path.stat().st_size for path in out.iterdir() if path.is_file())
    print(f"bench.run: wrote {written[0]} and {written[1]} ({size / 1e6:.1f} MB in {out}) in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    code = 0
    failed = [p["impl"] for p in run["processes"] if p["exit_code"]]
    if failed:
        print(f"bench.run: processes that failed: {', '.join(failed)}", file=sys.stderr)
        code = 1
    if run.get("agreement", {}).get("exit_code"):
        print("bench.run: the agreement check failed (bench/test_peers_agree.py)", file=sys.stderr)
        code = 1
    if args.check:
        check_code, message = report.check(report.targets(report.load([merged])[0]))
        print(f"bench.run: check: {message}", file=sys.stderr)
        code = code or check_code
    return code


if __name__ == "__main__":
    sys.exit(main())
