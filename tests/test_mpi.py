"""Data-parallel fit over MPI (``fit(comm=...)``): 2 ranks at batch b train as one process at
batch 2b, every rank ends with the same weights, rank 0 alone checkpoints, a resume equals an
uninterrupted run, validation stops every rank at the same epoch, and a failure on one rank
ends the job with the message instead of a hang.

Each check launches ``mpiexec -n 2`` on a script written here (two launches in all, ~seconds);
the one-process references are computed in this process."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn

pytest.importorskip("mpi4py", reason="fit(comm=...) needs mpi4py (pip install mpi4py mpich)")


def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


if _mpiexec() is None:
    pytest.skip("no mpiexec beside the Python executable nor on PATH (pip install mpich)", allow_module_level=True)

RANKS, BATCH, EPOCHS = 2, 4, 3  # a global batch of 8 rows
#: name: (dtype, optimizer, rows, dropout, sample_weight, backend); 17 rows end in a global batch of
#: 1 row (rank 1 gets none), 23 in one of 7 (4 + 3). On numba the compiled epoch's steps train.
CASES = {
    "sgd64": ("float64", "sgd", 17, False, False, "numpy"),
    "adam64_drop_weights": ("float64", "adam", 23, True, True, "numpy"),
    "sgd64_drop_weights": ("float64", "sgd", 17, True, True, "numpy"),
    "adam32_drop": ("float32", "adam", 23, True, False, "numpy"),
    "sgd32_weights": ("float32", "sgd", 23, False, True, "numpy"),
    "numba_sgd64": ("float64", "sgd", 17, False, False, "numba"),
    "numba_adam64_drop_weights": ("float64", "adam", 23, True, True, "numba"),
    "numba_adam32_drop": ("float32", "adam", 23, True, False, "numba"),
    "numba_sgd32_weights": ("float32", "sgd", 23, False, True, "numba"),
}
NUMBA = fastnn.available_backends()["numba"]

COMMON = textwrap.dedent("""
    import numpy as np
    import fastnn

    def data(rows, seed=0):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(rows, 5))
        y = rng.integers(0, 3, size=rows)
        w = rng.uniform(0.2, 2.0, size=rows)
        return X, y, w

    def net(dtype, dropout=False, seed=3, backend="numpy"):
        layers = [fastnn.Dense(5, 8), fastnn.Tanh()]
        layers += [fastnn.Dropout(0.3)] if dropout else []
        return fastnn.Sequential(*layers, fastnn.Dense(8, 3), seed=seed, dtype=dtype, backend=backend)

    def optimizer(name):
        return fastnn.SGD(lr=0.2, momentum=0.9) if name == "sgd" else fastnn.Adam(lr=0.02)

    def weights(model):
        return [a for d in model.dense_layers for a in (np.asarray(d.W), np.asarray(d.b))]
""")

WORKER = COMMON + textwrap.dedent("""
    import json, os, sys
    from mpi4py import MPI
    import fastnn.io as fastnn_io

    comm, out = MPI.COMM_WORLD, sys.argv[1]
    rank = comm.Get_rank()
    cases, batch, epochs = json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    report = {}
    for name, (dtype, opt, rows, dropout, weighted, backend) in cases.items():
        X, y, w = data(rows)
        model = net(dtype, dropout, backend=backend)
        history = model.fit(X, y, epochs=epochs, batch_size=batch, optimizer=optimizer(opt),
                            sample_weight=w if weighted else None, comm=comm)
        np.savez(f"{out}/{name}_{rank}.npz", *weights(model), loss=history.history["loss"])
        report[name + "_path"] = history.path

    # checkpoint + resume: 2 epochs with a checkpoint, then resumed to 4; against 4 uninterrupted
    saves = []
    original = fastnn_io.save_checkpoint
    fastnn_io.save_checkpoint = lambda *a, **k: (saves.append(1), original(*a, **k))
    X, y, w = data(23)
    ckpt = f"{out}/ckpt.npz"
    net("float64", True).fit(X, y, epochs=2, batch_size=batch, optimizer=optimizer("sgd"), checkpoint=ckpt, comm=comm)
    resumed = net("float64", True, seed=99)  # another seed: only the checkpoint can make it equal
    resumed.fit(X, y, epochs=4, batch_size=batch, optimizer=optimizer("sgd"), checkpoint=ckpt, resume=True, comm=comm)
    whole = net("float64", True)
    whole.fit(X, y, epochs=4, batch_size=batch, optimizer=optimizer("sgd"), comm=comm)
    report["saves"] = len(saves)
    report["resume_equal"] = all(np.array_equal(a, b) for a, b in zip(weights(resumed), weights(whole)))
    if "numba_sgd64" in cases:  # the compiled steps resume with the checkpoint's Adam and its state
        ckpt = f"{out}/ckpt_numba.npz"
        net("float64", backend="numba").fit(X, y, epochs=2, batch_size=batch, optimizer=optimizer("adam"),
                                            checkpoint=ckpt, comm=comm)
        resumed = net("float64", seed=99, backend="numba")
        history = resumed.fit(X, y, epochs=4, batch_size=batch, checkpoint=ckpt, resume=True, comm=comm)
        whole = net("float64", backend="numba")
        whole.fit(X, y, epochs=4, batch_size=batch, optimizer=optimizer("adam"), comm=comm)
        report["numba_resume_path"] = history.path
        report["numba_resume_close"] = all(np.allclose(a, b, rtol=1e-12, atol=1e-12)
                                           for a, b in zip(weights(resumed), weights(whole)))

    # ranks that could run other thread counts (rank 0 two, rank 1 one) run as many as the fewest:
    # the threads' split of a layer lays out the flat gradient the ranks add up
    if "numba_sgd64" in cases:
        import fastnn.distributed_compiled as compiled
        compiled._threads_here = lambda ranks_here: 2 if rank == 0 else 1
        rng = np.random.default_rng(7)
        Xw, yw = rng.random((200, 784)), rng.integers(0, 10, 200)
        backend = fastnn.get_backend("numba", num_threads=2 if rank == 0 else 1)
        wide = fastnn.Sequential(fastnn.Dense(784, 128), fastnn.ReLU(), fastnn.Dense(128, 10), seed=1,
                                 dtype="float32", backend=backend)
        try:
            wide.fit(Xw, yw, epochs=1, batch_size=50, optimizer=optimizer("adam"), comm=comm)
            report["mixed_threads"] = "ok"
        except Exception as error:
            report["mixed_threads"] = f"{type(error).__name__}: {error}"

    # the whole-epoch set-up failing on rank 1 alone (its buffers, its compile): every rank raises, no
    # rank waits at the kernel's barriers for it
    if "numba_sgd64" in cases:
        from fastnn.backends.numba import epoch_shared
        joins = epoch_shared.DataParallelSteps.join_ranks

        def join_fails_on_rank_1(self, *args):
            if rank == 1:
                raise MemoryError("no room to join on rank 1")
            return joins(self, *args)

        epoch_shared.DataParallelSteps.join_ranks = join_fails_on_rank_1
        try:
            net("float64", backend="numba").fit(*data(23)[:2], epochs=2, batch_size=batch, comm=comm)
            report["join_error"] = None
        except RuntimeError as error:
            report["join_error"] = str(error)
        epoch_shared.DataParallelSteps.join_ranks = joins

    # a fit that diverges: its traceback's frames (as a debugger reads them) hold views of the
    # shared window, which must still be there (a freed one crashes the process here)
    diverging = {"numpy": "numpy", **({"numba": "numba"} if "numba_sgd64" in cases else {})}
    for backend in diverging:
        blowing_up = fastnn.Sequential(fastnn.Dense(5, 8), fastnn.ReLU(), fastnn.Dense(8, 3), seed=3,
                                       dtype="float64", backend=backend)
        Xd, yd, _ = data(64)
        try:
            blowing_up.fit(Xd * 1e3, yd, epochs=50, batch_size=batch, optimizer=fastnn.SGD(lr=1e6), comm=comm)
            report[f"diverged_{backend}"] = "no divergence"
        except fastnn.TrainingDiverged as error:
            frame, read = error.__traceback__, 0
            while frame is not None:
                for value in list(frame.tb_frame.f_locals.values()):
                    if isinstance(value, np.ndarray):
                        read += int(np.isfinite(value.sum()) or 1)
                frame = frame.tb_next
            report[f"diverged_{backend}"] = read > 0

    # a whole epoch per call (X in memory) and the per-batch loop (a uint8 memmap, its rows read and
    # converted batch by batch in Python): the same sums, the same steps, the very same weights
    if "numba_adam32_drop" in cases:
        import warnings
        dtype, opt, rows, dropout, _, backend = cases["numba_adam32_drop"]
        X8 = np.clip(np.round(data(rows)[0] * 3 + 8), 0, 255).astype(np.uint8)
        y8 = data(rows)[1]
        X8.tofile(f"{out}/x8_{rank}.u8")
        on_disk = np.memmap(f"{out}/x8_{rank}.u8", dtype=np.uint8, mode="r", shape=X8.shape)
        found = {}
        for how, Xh in (("per_batch", on_disk), ("whole", X8.astype(np.float32))):
            model = net(dtype, dropout, backend=backend)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (unscaled pixels: not what this compares)
                found[how] = model.fit(Xh, y8, epochs=epochs, batch_size=batch, optimizer=optimizer(opt),
                                       comm=comm).path, weights(model)
        report["per_batch_path"], report["whole_epoch_path"] = found["per_batch"][0], found["whole"][0]
        report["whole_epoch_equal"] = all(np.array_equal(a, b) for a, b in zip(found["per_batch"][1], found["whole"][1]))

    # the per-batch sum as a plain Allreduce (no shared window): the very same weights
    os.environ["FASTNN_MPI_SHARED_SUM"] = "0"
    name = "numba_adam32_drop" if "numba_adam32_drop" in cases else "adam32_drop"
    dtype, opt, rows, dropout, _, backend = cases[name]
    model = net(dtype, dropout, backend=backend)
    history = model.fit(*data(rows)[:2], epochs=epochs, batch_size=batch, optimizer=optimizer(opt), comm=comm)
    del os.environ["FASTNN_MPI_SHARED_SUM"]
    shared = np.load(f"{out}/{name}_{rank}.npz")
    report["plain_allreduce_equal"] = all(np.array_equal(a, shared[f"arr_{i}"])
                                          for i, a in enumerate(weights(model)))

    # validation on rank 0 + EarlyStopping: the same stopping epoch everywhere
    Xv, yv, _ = data(11, seed=1)
    stopper = fastnn.EarlyStopping(monitor="val_loss", patience=1)
    history = net("float64").fit(X, y, epochs=40, batch_size=batch, optimizer=fastnn.SGD(lr=1.5, momentum=0.9),
                                 validation_data=(Xv, yv), callbacks=[stopper], comm=comm)
    report["stopped_after"] = len(history)
    report["val_loss"] = history.history["val_loss"]

    # a callback that fails on rank 1 alone, in epoch 2: every rank raises, naming rank 1
    class FailOnRank1(fastnn.Callback):
        def on_epoch_end(self, epoch, logs):
            if rank == 1 and epoch == 2:
                raise OSError("disk full on rank 1")
    try:
        net("float64").fit(X, y, epochs=4, batch_size=batch, callbacks=[FailOnRank1()], comm=comm)
        report["callback_error"] = None
    except RuntimeError as error:
        report["callback_error"] = str(error)
    # other data on rank 1 (same shape): refused on every rank before training, the model untouched
    model = net("float64")
    before = weights(model)
    try:
        model.fit(*data(23, seed=rank)[:2], epochs=1, batch_size=batch, comm=comm)
        report["mismatch_error"] = None
    except ValueError as error:
        report["mismatch_error"] = str(error)
    report["mismatch_untouched"] = all(np.array_equal(a, b) for a, b in zip(before, weights(model)))
    with open(f"{out}/report_{rank}.json", "w") as f:
        json.dump(report, f)
""")

FAILING = COMMON + textwrap.dedent("""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    X, y, _ = data(17)
    if comm.Get_rank() == 1:
        X[5, 2] = np.nan  # bad data on rank 1 only
    net("float64").fit(X, y, epochs=2, batch_size=4, comm=comm)
    print("finished, which it must not")
""")


SUM_LAYOUTS = ["machine", "pairs", "uneven", "singles", "switched off"]
SUMS = textwrap.dedent("""
    # BatchSum over 4 ranks: one machine's shared window, two "machines" of two ranks (shared
    # windows and their leaders' Allreduce), "machines" of three and one, four of one, and the
    # window switched off
    import os, sys
    import numpy as np
    from mpi4py import MPI
    from fastnn.mpi_ranks import Ranks
    from fastnn.mpi_sum import BatchSum

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    done = []
    for layout in LAYOUTS:
        os.environ["FASTNN_MPI_SHARED_SUM"] = "0" if layout == "switched off" else "1"
        if layout in ("machine", "switched off"):
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        else:
            node = comm.Split({"pairs": rank // 2, "uneven": rank // 3, "singles": rank}[layout], rank)
        for dtype in (np.float32, np.float64):
            batch_sum = BatchSum(Ranks(comm), 1001, dtype, node=node)
            shared = batch_sum.window is not None
            assert shared == (layout in ("machine", "pairs") or (layout == "uneven" and rank < 3)), layout
            for batch in range(4):
                batch_sum.mine[:] = np.arange(1001) * (rank + 1) + batch
                total = batch_sum.sum()
                expected = np.arange(1001) * (size * (size + 1) // 2) + batch * size
                assert total.dtype == dtype and np.array_equal(total, expected), (layout, dtype, batch)
            batch_sum.free()
        node.Free()
        done.append(layout)

    # the whole-epoch state in the window: where every rank is on one machine and there is room for
    # it (without room, the sum keeps its window); never across machines
    from fastnn import mpi_sum
    os.environ["FASTNN_MPI_SHARED_SUM"] = "1"
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    real = mpi_sum.room_for
    for state, room, has_state in ((500, None, True), (10**6, 10**6, False)):
        if room:
            mpi_sum.room_for = lambda nbytes, warn=True: nbytes < room
        batch_sum = BatchSum(Ranks(comm), 1001, np.float64, node=node, state=state)
        mpi_sum.room_for = real
        assert batch_sum.window is not None and (batch_sum.shared is not None) == has_state, state
        if has_state:
            assert [a.shape for a in batch_sum.shared] == [(state,)] * 3 and batch_sum.sync.shape[0] >= 8 * (size + 2)
            assert not batch_sum.sync.any() and batch_sum.slots.shape[0] >= (size - 1) * batch_sum.stride + 1001
        batch_sum.free()
    pairs = comm.Split(rank // 2, rank)
    batch_sum = BatchSum(Ranks(comm), 1001, np.float64, node=pairs, state=500)
    assert batch_sum.window is not None and batch_sum.shared is None
    batch_sum.free()
    pairs.Free()
    node.Free()
    done.append("state")
    with open(f"{sys.argv[1]}/sums_{rank}.txt", "w") as f:
        f.write(",".join(done))
""")


def _launch(tmp_path, script, *args, timeout=90, ranks=RANKS):
    path = tmp_path / "script.py"
    path.write_text(script)
    # numba may run 2 threads (a case below gives one rank two); each rank's share of the cores
    # (one here) still bounds them. ``-m mpi4py``: an error outside fit aborts the job, not a hang
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(path), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    import json
    out = tmp_path_factory.mktemp("mpi")
    cases = {name: case for name, case in CASES.items() if case[5] != "numba" or NUMBA[0]}
    if NUMBA[0]:  # compiled (or loaded) here once, not by both ranks at once
        from fastnn.backends.numba.epoch_shared import warmup, warmup_ranks
        warmup()
        warmup_ranks()
    done = _launch(out, WORKER, str(out), json.dumps(cases), str(BATCH), str(EPOCHS))
    assert done.returncode == 0, done.stdout + done.stderr
    reports = [json.loads((out / f"report_{rank}.json").read_text()) for rank in range(RANKS)]
    return out, reports


def _reference(name):
    """The one-process run at batch RANKS·BATCH."""
    namespace = {}
    exec(COMMON, namespace)
    dtype, opt, rows, dropout, weighted, backend = CASES[name]
    X, y, w = namespace["data"](rows)
    model = namespace["net"](dtype, dropout, backend=backend)
    history = model.fit(X, y, epochs=EPOCHS, batch_size=RANKS * BATCH, optimizer=namespace["optimizer"](opt),
                        sample_weight=w if weighted else None)
    return namespace["weights"](model), history.history["loss"]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_train_as_one_process_at_twice_the_batch(ran, name):
    if CASES[name][5] == "numba" and not NUMBA[0]:
        pytest.skip(f"numba backend unavailable: {NUMBA[1]}")
    out, reports = ran
    per_rank = [np.load(out / f"{name}_{rank}.npz") for rank in range(RANKS)]
    expected, expected_loss = _reference(name)
    tolerance = dict(rtol=1e-12, atol=1e-12) if CASES[name][0] == "float64" else dict(rtol=2e-5, atol=2e-6)
    for rank, got in enumerate(per_rank):
        arrays = [got[f"arr_{i}"] for i in range(len(expected))]
        for a, b in zip(arrays, expected):
            np.testing.assert_allclose(a, b, **tolerance, err_msg=f"{name}, rank {rank}")
        np.testing.assert_allclose(got["loss"], expected_loss, rtol=1e-5 if "32" in name else 1e-12)
    for i in range(len(expected)):  # every rank holds the very same weights
        assert np.array_equal(per_rank[0][f"arr_{i}"], per_rank[1][f"arr_{i}"])
    # on numba each epoch is one call per rank (its ranks share the parameters, one thread each here)
    how = "compiled epoch, one native call per epoch," if CASES[name][5] == "numba" else "layer by layer"
    assert reports[0][name + "_path"] == f"{how} over 2 MPI ranks (data parallel)"


def test_a_whole_epoch_per_call_gives_the_weights_of_the_per_batch_loop(ran):
    if not NUMBA[0]:
        pytest.skip(f"numba backend unavailable: {NUMBA[1]}")
    _, reports = ran
    for report in reports:
        assert report["whole_epoch_path"] == "compiled epoch, one native call per epoch, over 2 MPI ranks (data parallel)"
        assert report["per_batch_path"] == "compiled epoch, one native call per batch, over 2 MPI ranks (data parallel)"
        assert report["whole_epoch_equal"] is True


def test_a_whole_epoch_set_up_failing_on_one_rank_raises_on_every_rank(ran):
    if not NUMBA[0]:
        pytest.skip(f"numba backend unavailable: {NUMBA[1]}")
    _, reports = ran
    for report in reports:
        assert "rank 1" in report["join_error"] and "no room to join on rank 1" in report["join_error"]


def test_the_batch_sum_adds_every_ranks_buffer_on_one_machine_and_across_machines(tmp_path):
    done = _launch(tmp_path, f"LAYOUTS = {SUM_LAYOUTS}\n" + SUMS, str(tmp_path), timeout=60, ranks=4)
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in range(4):
        assert (tmp_path / f"sums_{rank}.txt").read_text() == ",".join(SUM_LAYOUTS + ["state"])


def test_after_a_diverged_fit_the_arrays_its_traceback_holds_can_still_be_read(ran):
    _, reports = ran
    for report in reports:
        assert report["diverged_numpy"] is True
        assert report.get("diverged_numba", True) is True


def test_ranks_that_could_run_other_thread_counts_run_the_same(ran):
    if not NUMBA[0]:
        pytest.skip(f"numba backend unavailable: {NUMBA[1]}")
    _, reports = ran
    assert [report["mixed_threads"] for report in reports] == ["ok", "ok"]


def test_a_dev_shm_too_small_for_the_window_means_a_plain_allreduce_and_says_so(monkeypatch):
    from types import SimpleNamespace
    from fastnn import mpi_sum
    free = {"blocks": 1000}
    monkeypatch.setattr(mpi_sum.os, "statvfs", lambda path: SimpleNamespace(f_bavail=free["blocks"], f_frsize=4096))
    with pytest.warns(RuntimeWarning, match="too little for the gradients' shared window"):
        assert not mpi_sum.room_for(3 * 2**20)  # 4 MB free, 6 MB asked
    free["blocks"] = 2000
    assert mpi_sum.room_for(3 * 2**20)  # 8 MB free


def test_a_plain_allreduce_per_batch_gives_the_same_weights_as_the_shared_window(ran):
    _, reports = ran
    assert all(report["plain_allreduce_equal"] for report in reports)


def test_rank_0_alone_checkpoints_and_a_resume_equals_an_uninterrupted_run(ran):
    out, reports = ran
    assert [r["saves"] for r in reports] == [4, 0]  # 2 epochs, then epochs 3-4 resumed: on rank 0 only
    assert all(r["resume_equal"] for r in reports)
    assert fastnn.load(out / "ckpt.npz").n_in == 5


def test_a_resume_on_the_compiled_steps_continues_the_checkpoints_optimizer(ran):
    if not NUMBA[0]:
        pytest.skip(f"numba backend unavailable: {NUMBA[1]}")
    _, reports = ran
    for report in reports:  # no optimizer given: Adam, its moments and step count, from the checkpoint
        assert report["numba_resume_path"].startswith("compiled epoch")
        assert report["numba_resume_close"]


def test_validation_and_early_stopping_stop_every_rank_at_the_same_epoch(ran):
    _, reports = ran
    namespace = {}
    exec(COMMON, namespace)
    X, y, _ = namespace["data"](23)
    Xv, yv, _ = namespace["data"](11, seed=1)
    history = namespace["net"]("float64").fit(X, y, epochs=40, batch_size=RANKS * BATCH,
                                              optimizer=fastnn.SGD(lr=1.5, momentum=0.9), validation_data=(Xv, yv),
                                              callbacks=[fastnn.EarlyStopping(monitor="val_loss", patience=1)])
    assert reports[0]["stopped_after"] == reports[1]["stopped_after"] == len(history) < 40
    assert reports[0]["val_loss"] == reports[1]["val_loss"]
    np.testing.assert_allclose(reports[0]["val_loss"], history.history["val_loss"], rtol=1e-12)


def test_a_callback_failing_on_one_rank_raises_on_every_rank(ran):
    _, reports = ran
    for report in reports:
        assert "rank 1 failed: OSError: disk full on rank 1" in report["callback_error"]


def test_other_data_on_one_rank_is_refused_on_every_rank_before_training(ran):
    _, reports = ran
    for report in reports:
        assert "differ between ranks (rank 0 vs rank(s) 1)" in report["mismatch_error"]
        assert report["mismatch_untouched"]


def test_bad_data_on_one_rank_ends_the_job_with_the_message_not_a_hang(tmp_path):
    done = _launch(tmp_path, FAILING, timeout=60)
    assert done.returncode != 0
    assert "finished" not in done.stdout
    # both ranks raise, each naming rank 1 and what was wrong with its data
    assert done.stderr.count("fit over MPI: rank 1 failed: ValueError") == RANKS, done.stderr


def test_importing_fastnn_leaves_mpi4py_unimported():
    code = "import sys, fastnn, fastnn.distributed; print('mpi4py' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


CUPY_WORKER = COMMON + textwrap.dedent("""
    import sys
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    X, y, w = data(23)
    model = net("float32", True, backend="cupy")
    model.fit(X, y, epochs=3, batch_size=4, optimizer=optimizer("adam"), sample_weight=w, comm=comm)
    host = [model.backend.to_numpy(p) for d in model.dense_layers for p in (d.W, d.b)]
    np.savez(f"{sys.argv[1]}/cupy_{comm.Get_rank()}.npz", *host)
""")


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_aware", [False, True], ids=["through_host", "device_buffers"])
def test_two_ranks_on_cupy_train_as_one_process(tmp_path, cuda_aware, monkeypatch):
    available, reason = fastnn.available_backends()["cupy"]
    if not available:
        pytest.skip(f"backend 'cupy' unavailable: {reason}")
    if cuda_aware and os.environ.get("FASTNN_CUDA_AWARE_MPI") != "1":
        pytest.skip("the MPI here is not declared CUDA-aware (FASTNN_CUDA_AWARE_MPI=1; MPICH's wheel is not)")
    monkeypatch.setenv("FASTNN_CUDA_AWARE_MPI", "1" if cuda_aware else "0")
    done = _launch(tmp_path, CUPY_WORKER, str(tmp_path), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    namespace = {}
    exec(COMMON, namespace)
    X, y, w = namespace["data"](23)
    one = namespace["net"]("float32", True, backend="cupy")
    one.fit(X, y, epochs=3, batch_size=2 * 4, optimizer=namespace["optimizer"]("adam"), sample_weight=w)
    expected = [one.backend.to_numpy(p) for d in one.dense_layers for p in (d.W, d.b)]
    per_rank = [np.load(tmp_path / f"cupy_{rank}.npz") for rank in range(RANKS)]
    for got in per_rank:
        for i, b in enumerate(expected):
            np.testing.assert_allclose(got[f"arr_{i}"], b, rtol=2e-5, atol=2e-6)
    for i in range(len(expected)):
        assert np.array_equal(per_rank[0][f"arr_{i}"], per_rank[1][f"arr_{i}"])


def test_device_buffers_only_on_cupy_and_only_when_declared(monkeypatch):
    from types import SimpleNamespace

    from fastnn.distributed import device_buffers
    cupy, numba = SimpleNamespace(name="cupy"), SimpleNamespace(name="numba")
    monkeypatch.delenv("FASTNN_CUDA_AWARE_MPI", raising=False)
    assert not device_buffers(cupy)
    monkeypatch.setenv("FASTNN_CUDA_AWARE_MPI", "1")
    assert device_buffers(cupy) and not device_buffers(numba)
    monkeypatch.setenv("FASTNN_CUDA_AWARE_MPI", "0")
    assert not device_buffers(cupy)
