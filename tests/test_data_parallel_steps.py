"""The compiled epoch's data-parallel steps (``Trainer.data_parallel``), without MPI: two "ranks" in
one process, their gradient buffers summed by hand as the Allreduce of ``fastnn.distributed`` sums
them, train exactly as one process at twice the batch, on one thread and on two per rank (threads
split every batch's work), with Adam, AdamW, momentum, Dropout, sample weights and a uint8 input
under a Rescale (the rows staged per batch). The MPI launch itself is tested in test_mpi.py."""
import numpy as np
import pytest

import fastnn
from fastnn.distributed_compiled import global_weight
from fastnn.mpi_ranks import share
from fastnn.losses import get_loss

pytest.importorskip("numba", reason="the compiled epoch is the numba backend's")

RANKS = 2


def _net(dtype, dropout, threads, rescale=False, n_in=64, seed=5):
    layers = [fastnn.Rescale(1 / 255)] if rescale else []
    layers += [fastnn.Dense(n_in, 128), fastnn.ReLU()]
    layers += [fastnn.Dropout(0.25)] if dropout else []
    layers += [fastnn.Dense(128, 10)]
    return fastnn.Sequential(*layers, seed=seed, dtype=dtype, backend=fastnn.get_backend("numba", num_threads=threads))


def _data(rows, uint8=False):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(rows, 64)).astype(np.uint8) if uint8 else rng.normal(size=(rows, 64))
    y = rng.integers(0, 10, size=rows)
    return X, y, rng.uniform(0.2, 2.0, size=rows)


def _two_ranks(net_factory, X, y, w, optimizer, batch, epochs, threads):
    """Train RANKS copies of the model on shares of each global batch (shuffle off: batches in row
    order), the gradient buffers summed between them; returns rank 0's model and the loss sums."""
    nets = [net_factory() for _ in range(RANKS)]
    loss = get_loss("cross_entropy")
    T = np.zeros((len(y), 10), dtype=nets[0].dtype)
    T[np.arange(len(y)), y] = 1
    labels = y.astype(np.int64)
    steps = []
    for net in nets:
        opt = optimizer()
        net.loss, net.optimizer = loss, opt
        trainer = net.backend.epoch_trainer(net, loss, opt)
        assert trainer is not None
        steps.append(trainer.data_parallel(X, T, labels, w, batch, threads))
    buffers = [np.zeros(s.size, dtype=nets[0].dtype) for s in steps]  # each "rank"'s own
    sums = []
    order = np.arange(len(y))
    for _ in range(epochs):
        for s in steps:
            s.begin_epoch()
        total = 0.0
        for start in range(0, len(y), batch * RANKS):
            rows = order[start:start + batch * RANKS]
            weight, wscale = global_weight(w, rows)
            for rank, s in enumerate(steps):
                lo, hi = share(len(rows), RANKS, rank)
                total += s.gradients(rows[lo:hi], len(rows), weight, wscale, into=buffers[rank])[0]
            summed = buffers[0] + buffers[1]  # the sum over the ranks
            for s in steps:
                s.step(summed)
        for s, net in zip(steps, nets):
            s.end_epoch()
            net.epochs_trained += 1  # as fit counts epochs (Dropout's masks follow it)
        sums.append(total)
    for a, b in zip(nets[0].dense_layers, nets[1].dense_layers):
        assert np.array_equal(a.W, b.W)  # every rank the very same weights
    return nets[0], sums, steps[0].P


CASES = {  # name: dtype, optimizer, dropout, weighted, uint8 under Rescale, rows
    "adam64": ("float64", lambda: fastnn.Adam(lr=0.01), False, False, False, 1611),
    "momentum64_drop_weights": ("float64", lambda: fastnn.SGD(lr=0.1, momentum=0.9, weight_decay=1e-3), True, True,
                                False, 1611),
    "adamw32_drop": ("float32", lambda: fastnn.AdamW(lr=0.01, weight_decay=0.1), True, False, False, 1611),
    "sgd32_weights_uint8": ("float32", lambda: fastnn.SGD(lr=0.1), False, True, True, 1611),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_two_shares_summed_train_as_one_process_at_twice_the_batch(name, threads):
    dtype, optimizer, dropout, weighted, uint8, rows = CASES[name]
    X, y, w = _data(rows, uint8)
    w = w if weighted else None
    batch, epochs = 16, 3  # 1,611 rows: a last global batch of 11 rows (6 + 5)
    factory = lambda: _net(dtype, dropout, threads, rescale=uint8)  # noqa: E731
    got, loss_sums, P = _two_ranks(factory, X, y, w, optimizer, batch, epochs, threads)
    one = factory()
    history = one.fit(X, y, epochs=epochs, batch_size=RANKS * batch, optimizer=optimizer(), shuffle=False,
                      sample_weight=w)
    assert history.path.startswith("compiled whole epoch")
    assert P == min(threads, 2)
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(got.dense_layers, one.dense_layers):
        np.testing.assert_allclose(a.W, b.W, **tolerance)
        np.testing.assert_allclose(a.b, b.b, **tolerance)
    total_weight = len(y) if w is None else w.sum()
    np.testing.assert_allclose(np.array(loss_sums) / total_weight, history.history["loss"],
                               rtol=1e-12 if dtype == "float64" else 1e-5)
    assert got.optimizer.t == one.optimizer.t  # Adam's bias corrections count the same steps


def _two_ranks_whole(net_factory, X, y, w, optimizer, batch, epochs, results_of=None):
    """As ``_two_ranks``, each epoch one ``ranks_epoch`` call per "rank", the two on two threads at
    once (the kernel releases the GIL), on parameters, slots and barrier counts they share as the
    ranks of one machine share ``fastnn.mpi_sum``'s window."""
    import threading

    nets, steps = [net_factory() for _ in range(RANKS)], []
    loss = get_loss("cross_entropy")
    T = np.zeros((len(y), 10), dtype=nets[0].dtype)
    T[np.arange(len(y)), y] = 1
    for net in nets:
        opt = optimizer()
        net.loss, net.optimizer = loss, opt
        steps.append(net.backend.epoch_trainer(net, loss, opt).data_parallel(X, T, y.astype(np.int64), w, batch, 1))
        assert steps[-1].whole_epochs
    stride = -(-steps[0].size // 16) * 16
    slots = np.zeros(RANKS * stride, dtype=nets[0].dtype)
    shared = tuple(np.zeros(len(a), dtype=nets[0].dtype) for a in steps[0].state())
    sync = np.zeros(8 * (RANKS + 2), dtype=np.int64)
    for rank, s in enumerate(steps):
        s.join_ranks(slots, stride, shared, sync, rank, RANKS)
    sums = []
    for _ in range(epochs):
        for s in steps:
            s.begin_epoch()
        for into, own in zip(shared, steps[0].state()):
            into[:] = own
        results = [None] * RANKS

        def rank_runs(rank):
            results[rank] = steps[rank].ranks_epoch(np.arange(len(y)))

        workers = [threading.Thread(target=rank_runs, args=(rank,)) for rank in range(RANKS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if results_of is not None:
            results_of.append((list(results), sync.copy()))
        else:
            assert all(result is not None and result[2] == -1 for result in results)
        for s, net in zip(steps, nets):
            for own, values in zip(s.state(), shared):
                own[:] = values[:len(own)]
            s.end_epoch()
            net.epochs_trained += 1
        sums.append(sum(result[0] for result in results))
    return nets[0], sums


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if not case[4]])
def test_whole_epochs_of_ranks_sharing_memory_step_as_the_per_batch_sum(name):
    dtype, optimizer, dropout, weighted, _, rows = CASES[name]
    X, y, w = _data(rows)
    X, w = X.astype(dtype), w if weighted else None  # (X in another dtype: converted per batch, not whole)
    factory = lambda: _net(dtype, dropout, 1)  # noqa: E731
    per_batch, per_batch_sums, _ = _two_ranks(factory, X, y, w, optimizer, 16, 3, 1)
    whole, whole_sums = _two_ranks_whole(factory, X, y, w, optimizer, 16, 3)
    for a, b in zip(whole.dense_layers, per_batch.dense_layers):
        assert np.array_equal(a.W, b.W) and np.array_equal(a.b, b.b)  # the same sums in the same order
    np.testing.assert_allclose(whole_sums, per_batch_sums, rtol=1e-12 if dtype == "float64" else 1e-5)
    assert whole.optimizer.t == per_batch.optimizer.t


@pytest.mark.parametrize("rows, batch", [(97, 16), (300, 80)])
def test_whole_epochs_of_ranks_over_empty_weightless_and_long_shares_train_as_one_process(rows, batch):
    # 97 rows at 2 x 16: the last global batch of 1 row leaves rank 1 none, and rows 32-63 (global
    # batch 1) weigh zero: no step; 300 rows at 2 x 80: more rows per rank than one pass of the
    # gradient's row chunks
    X, y, w = _data(rows)
    w[32:64] = 0.0
    factory = lambda: _net("float64", True, 1)  # noqa: E731
    optimizer = lambda: fastnn.Adam(lr=0.01)  # noqa: E731
    whole, _ = _two_ranks_whole(factory, X, y, w, optimizer, batch, 2)
    one = factory()
    one.fit(X, y, epochs=2, batch_size=RANKS * batch, optimizer=optimizer(), shuffle=False, sample_weight=w)
    for a, b in zip(whole.dense_layers, one.dense_layers):
        np.testing.assert_allclose(a.W, b.W, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.b, b.b, rtol=1e-12, atol=1e-12)
    assert whole.optimizer.t == one.optimizer.t  # (no step for the batch weighing zero)


def test_whole_epochs_of_ranks_stop_together_before_a_bad_batch():
    X, y, _ = _data(130)
    X[85, 3] = np.inf  # in rank 1's share (rows 80-95) of global batch 2 (rows 64-95)
    factory = lambda: _net("float64", False, 1)  # noqa: E731
    found = []
    _two_ranks_whole(factory, X, y, None, lambda: fastnn.SGD(lr=0.1), 16, 1, results_of=found)
    (results, sync), = found
    assert [result[2] for result in results] == [2, 2]  # both ranks: global batch 2, none of it stepped
    assert sync[0] == sync[8] == 2 * 2 + 1  # the same barriers passed: two per batch stepped, one more


def test_an_interrupted_rank_stops_every_ranks_whole_epoch():
    # Ctrl-C on one rank raises the abort flag in the shared sync: every rank's kernel stops at its
    # next barrier, and every rank raises, none of the epoch taken
    X, y, _ = _data(130)
    nets, steps = [], []
    loss = get_loss("cross_entropy")
    T = np.eye(10)[y]
    for _ in range(RANKS):
        net = _net("float64", False, 1)
        opt = fastnn.SGD(lr=0.1)
        net.loss, net.optimizer = loss, opt
        steps.append(net.backend.epoch_trainer(net, loss, opt).data_parallel(X, T, y.astype(np.int64), None, 16, 1))
        nets.append(net)
    stride = -(-steps[0].size // 16) * 16
    slots, sync = np.zeros(RANKS * stride), np.zeros(8 * (RANKS + 2), dtype=np.int64)
    shared = tuple(np.zeros(len(a)) for a in steps[0].state())
    for rank, s in enumerate(steps):
        s.join_ranks(slots, stride, shared, sync, rank, RANKS)
        s.begin_epoch()
    sync[8 * RANKS] = 1  # as _join raises it on Ctrl-C
    for s in steps:
        with pytest.raises(KeyboardInterrupt, match="interrupted"):
            s.ranks_epoch(np.arange(130))
        assert s.steps == 0
        s.end_epoch()


def test_whole_epochs_need_one_thread_and_x_passed_whole():
    net = _net("float32", False, 2)
    loss, opt = get_loss("cross_entropy"), fastnn.SGD(lr=0.1)
    net.loss, net.optimizer = loss, opt
    X, y, _ = _data(1611)
    T = np.eye(10, dtype=np.float32)[y]
    trainer = net.backend.epoch_trainer(net, loss, opt)
    for threads, Xh, whole in ((2, X.astype(np.float32), False), (1, X, False), (1, X.astype(np.float32), True)):
        steps = trainer.data_parallel(Xh, T, y.astype(np.int64), None, 16, threads)
        assert steps.P == threads and steps.whole_epochs == whole  # (float64 X: converted per batch)
    steps = trainer.data_parallel(X, T, y.astype(np.int64), None, 16, 1)
    with pytest.raises(RuntimeError, match="needs one thread"):
        steps.join_ranks(np.zeros(2 * steps.size, np.float32), steps.size, steps.state(), np.zeros(32, np.int64), 0, 2)
    whole = trainer.data_parallel(X.astype(np.float32), T, y.astype(np.int64), None, 16, 1)
    with pytest.raises(RuntimeError, match="before join_ranks"):
        whole.ranks_epoch(np.arange(1611))
    buffers = dict(slots=np.zeros(2 * whole.size, np.float32), stride=whole.size, shared=whole.state(),
                   sync=np.zeros(32, np.int64), rank=0, ranks=2)
    for name, bad, message in (("stride", whole.size - 1, "at least"), ("rank", 2, "rank 2 of 2"),
                               ("slots", np.zeros(whole.size, np.float32), "slots buffer must be"),
                               ("shared", (whole.state()[0][:-1],) + whole.state()[1:], "shared state must be"),
                               ("sync", np.zeros(31, np.int64), "sync must be")):
        with pytest.raises(ValueError, match=message):
            whole.join_ranks(**{**buffers, name: bad})


@pytest.mark.parametrize("bad", ["float64", "short", "strided", "read-only", "list"])
def test_a_gradient_buffer_the_kernel_cannot_take_is_refused_by_name(bad):
    net = _net("float32", False, 1)
    loss, opt = get_loss("cross_entropy"), fastnn.SGD(lr=0.1)
    net.loss, net.optimizer = loss, opt
    X, y, _ = _data(40)
    T = np.eye(10, dtype=np.float32)[y]
    steps = net.backend.epoch_trainer(net, loss, opt).data_parallel(X, T, y.astype(np.int64), None, 8, 1)
    buffer = {"float64": np.zeros(steps.size), "short": np.zeros(steps.size - 1, np.float32),
              "strided": np.zeros(2 * steps.size, np.float32)[::2], "read-only": np.zeros(steps.size, np.float32),
              "list": [0.0] * steps.size}[bad]
    if bad == "read-only":
        buffer.flags.writeable = False
    steps.begin_epoch()
    with pytest.raises(ValueError, match=f"at least {steps.size} values"):
        steps.gradients(np.arange(8), 8, 8.0, 0.0, into=buffer)
    with pytest.raises(ValueError, match="gradient buffer must be"):
        steps.step(buffer)
    steps.end_epoch()
