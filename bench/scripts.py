"""Whole scripts, as a user runs them: fastnn's drop-in beside scikit-learn's MLP, from the shell
prompt to the answer.

    python -m bench.scripts                       # every script, warm caches, 5 rounds
    python -m bench.scripts --cold                # also with empty numba/fastnn caches
    python -m bench.scripts --only digits --rounds 7

Each script runs in three forms, each in a fresh ``python`` process: with scikit-learn's
``MLPClassifier``, with ``from fastnn import MLPClassifier``, and with the model lines removed
(the imports of NumPy and scikit-learn and the data, which both libraries share). A script's
**library time** is its time minus that base. The forms take turns, round by round (the
machine drifts by tens of per cent within minutes), and the report gives medians and the
ratios scikit-learn ÷ fastnn (above 1: fastnn is faster).

``--cold`` runs fastnn's form once more per round with ``NUMBA_CACHE_DIR`` and
``FASTNN_CACHE_DIR`` pointing at empty folders, as on a fresh machine. Where fastnn then
fills the cache in a background process, its CPU seconds are reported beside the script's
time (the process logs them; the benchmark waits for it before the next run).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

#: name -> (setup shared by every form, model lines with {MLP} for the estimator class,
#: what the model lines print); the estimator import is a model line.
SCRIPTS = {
    "digits": ("""
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.model_selection import GridSearchCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        X, y = load_digits(return_X_y=True)
        """, """
        {IMPORT}
        search = GridSearchCV(make_pipeline(StandardScaler(),
                                            MLPClassifier(hidden_layer_sizes=(64,), max_iter=60, random_state=0)),
                              {"mlpclassifier__alpha": [1e-4, 1e-2], "mlpclassifier__learning_rate_init": [1e-3, 1e-2]},
                              cv=3)
        search.fit(X, y)
        print("score", search.best_score_)
        """),
    "mnist60k": ("""
        import numpy as np
        rng = np.random.default_rng(0)
        X = rng.random((70_000, 784), dtype=np.float32)
        teacher = rng.standard_normal((784, 10)).astype(np.float32)
        y = np.argmax((X - 0.5) @ teacher, axis=1)
        X_train, y_train, X_test, y_test = X[:60_000], y[:60_000], X[60_000:], y[60_000:]
        """, """
        {IMPORT}
        clf = MLPClassifier(hidden_layer_sizes=(128,), batch_size=128, max_iter=10, random_state=0)
        clf.fit(X_train, y_train)
        print("score", clf.score(X_test, y_test))
        """),
    "tabular": ("""
        import numpy as np
        from sklearn.datasets import load_breast_cancer
        from sklearn.model_selection import cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        X, y = load_breast_cancer(return_X_y=True)
        """, """
        {IMPORT}
        model = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0))
        print("score", cross_val_score(model, X, y, cv=5).mean())
        """),
}
IMPORTS = {"sklearn": "from sklearn.neural_network import MLPClassifier",
           "fastnn": "from fastnn import MLPClassifier"}
PRELUDE = "import warnings\nwarnings.filterwarnings('ignore')  # ConvergenceWarning: the same in both\n"


def source(name, form):
    setup, model = SCRIPTS[name]
    text = PRELUDE + textwrap.dedent(setup)
    if form != "base":
        text += textwrap.dedent(model).replace("{IMPORT}", IMPORTS[form])
    return text


def run(text, env):
    """Wall seconds of ``python -c text`` and what it printed as its score."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", text], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"script failed:\n{text}\n{done.stderr}")
    score = next((line.split()[1] for line in done.stdout.splitlines() if line.startswith("score")), None)
    return seconds, score


def wait_for_background(cache_dir, timeout=600):
    """CPU seconds of the cache-filling process of a cold run (0 when none ran), once it ended."""
    log = os.path.join(cache_dir, "background-compile.json")
    lock = os.path.join(cache_dir, "background-compile.lock")
    started = time.monotonic()  # a process started as the script ended takes its lock within a second
    while not _held(lock) and not os.path.exists(log) and time.monotonic() < started + 3:
        time.sleep(0.05)
    while _held(lock) and time.monotonic() < started + timeout:
        time.sleep(0.2)
    if not os.path.exists(log):
        return 0.0
    with open(log) as f:
        return float(json.load(f).get("cpu_seconds", 0.0))


def _held(lock):
    """True while the background compile holds its flock on ``lock`` (the file itself stays)."""
    import fcntl

    if not os.path.exists(lock):
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.scripts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated scripts (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every form, in turns (default 5)")
    parser.add_argument("--cold", action="store_true", help="also fastnn with empty caches (a fresh machine)")
    parser.add_argument("--json", metavar="PATH", help="write every timing here")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on a user's machine: imports from .pyc after the first run
    results = {}
    for name in args.only.split(","):
        forms = ["base", "sklearn", "fastnn"] + (["fastnn-cold"] if args.cold else [])
        times = {form: [] for form in forms}
        scores, background = {}, []
        for form in forms:  # a warm-up round: the disk cache, numba's kernels, .pyc files
            if form != "fastnn-cold":
                run(source(name, form), env)
        for r in range(args.rounds):
            for form in forms if r % 2 == 0 else forms[::-1]:
                if form == "fastnn-cold":
                    with tempfile.TemporaryDirectory() as numba_dir, tempfile.TemporaryDirectory() as fastnn_dir:
                        cold_env = dict(env, NUMBA_CACHE_DIR=numba_dir, FASTNN_CACHE_DIR=fastnn_dir)
                        seconds, score = run(source(name, "fastnn"), cold_env)
                        background.append(wait_for_background(fastnn_dir))
                else:
                    seconds, score = run(source(name, form), env)
                times[form].append(seconds)
                scores[form] = score
        med = {form: statistics.median(t) for form, t in times.items()}
        results[name] = {"times": times, "median": med, "scores": scores, "background_cpu_s": background}
        print(report(name, med, scores, background), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def report(name, med, scores, background):
    base = med["base"]
    lib = {form: med[form] - base for form in med if form != "base"}
    lines = [f"{name}: median of the rounds; base (imports + data, no model) {base:.2f} s",
             f"  scikit-learn  whole {med['sklearn']:.2f} s  library {lib['sklearn']:.2f} s  score {scores['sklearn']}",
             f"  fastnn        whole {med['fastnn']:.2f} s  library {lib['fastnn']:.2f} s  score {scores['fastnn']}",
             f"  ratio (scikit-learn / fastnn, warm caches): whole {med['sklearn'] / med['fastnn']:.2f}x, "
             f"library {lib['sklearn'] / max(lib['fastnn'], 1e-3):.2f}x"]
    if "fastnn-cold" in med:
        lines += [f"  fastnn, empty caches: whole {med['fastnn-cold']:.2f} s (library "
                  f"{lib['fastnn-cold']:.2f} s), scikit-learn / fastnn whole {med['sklearn'] / med['fastnn-cold']:.2f}x;"
                  f" background compile CPU {statistics.median(background) if background else 0:.1f} s "
                  f"(after the script, at low priority)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
