"""Training-control callbacks: EarlyStopping, ModelCheckpoint, LearningRateScheduler (with the
schedules of fastnn.schedules) and ReduceLROnPlateau, against Keras 3's semantics.

Each callback is driven twice: hook by hook with made-up logs (``_drive`` calls the hooks in
fit's order), where the expected epochs follow from the rules by hand, and in a real ``fit`` on
the numpy backend and on numba's compiled whole epoch (float64), where what it did is checked
against what a LambdaCallback later in the list saw.
"""
import math
import types

import numpy as np
import pytest

import fastnn
from conftest import blobs
from fastnn.callbacks import (Callback, EarlyStopping, LambdaCallback, LearningRateScheduler, ModelCheckpoint,
                              ReduceLROnPlateau)
from fastnn.schedules import CosineDecay, ExponentialDecay, StepDecay


@pytest.fixture(params=["numpy", "numba"])
def backend_name(request):
    """numpy, and numba (whose fit trains with the compiled whole epoch); numba skips where absent."""
    if request.param == "numba":
        pytest.importorskip("numba", reason="numba is not installed: the compiled epoch is not tested")
    return request.param


@pytest.fixture(scope="module")
def data():
    X, y = blobs(n=240, seed=0, spread=3.0)
    return X[:160], y[:160], X[160:], y[160:]


def _net(backend_name="numpy"):
    return fastnn.Sequential(fastnn.Dense(20, 8), fastnn.ReLU(), fastnn.Dense(8, 4), backend=backend_name,
                             seed=0, dtype="float64")


def _weights(net):
    return [net.backend.to_numpy(p).copy() for d in net.dense_layers for p in (d.W, d.b)]


def _assert_same(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def _fit(net, data, callbacks, epochs=6, lr=0.2, **kwargs):
    """fit with validation data and a Recorder last; (history, recorder)."""
    X, y, X_val, y_val = data
    recorder = Recorder()
    history = net.fit(X, y, epochs=epochs, batch_size=32, optimizer=fastnn.SGD(lr),
                      validation_data=(X_val, y_val), callbacks=[*callbacks, recorder], **kwargs)
    if net.backend.name == "numba":
        assert history.path.startswith("compiled whole epoch"), history.path
    return history, recorder


class Recorder(Callback):
    """What each epoch's end looked like to a callback later in the list: logs, lr, weights."""

    def __init__(self):
        self.logs, self.lr, self.weights = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))
        self.lr.append(self.model.optimizer.lr)
        self.weights.append(_weights(self.model))


def _drive(callback, values, key="val_loss", lr=1.0):
    """The hooks in fit's order with ``{key: value}`` logs; the model a namespace. (epochs, lrs)."""
    model = types.SimpleNamespace(stop_training=False, optimizer=fastnn.SGD(lr))
    callback.set_model(model)
    callback.on_train_begin({})
    lrs = []
    for epoch, value in enumerate(values, start=1):
        callback.on_epoch_begin(epoch, {})
        callback.on_epoch_end(epoch, {key: value, "loss": 0.0})
        lrs.append(model.optimizer.lr)
        if model.stop_training:
            break
    callback.on_train_end({})
    return epoch, lrs


# ---- EarlyStopping ---------------------------------------------------------------------
def test_early_stopping_stops_after_patience_epochs_without_improvement():
    stop = EarlyStopping(patience=2)
    epochs, _ = _drive(stop, [1.0, 0.8, 0.9, 0.85, 0.5, 0.4])
    assert epochs == 4 and stop.stopped_epoch == 4
    assert stop.best == 0.8 and stop.best_epoch == 2
    assert _drive(EarlyStopping(patience=0), [1.0, 0.8, 0.9, 0.5])[0] == 3
    assert _drive(EarlyStopping(patience=0), [1.0, 0.8, 0.7, 0.6])[0] == 4  # never stalls: never stops


def test_early_stopping_min_delta_mode_and_warm_up():
    values = [1.0, 0.95, 0.9, 0.85]
    assert _drive(EarlyStopping(patience=1, min_delta=0.1), values)[0] == 2  # 0.05 better is no better
    assert _drive(EarlyStopping(patience=1), values)[0] == 4
    accuracies = [0.5, 0.6, 0.55, 0.7]
    assert _drive(EarlyStopping(monitor="val_accuracy"), accuracies, key="val_accuracy")[0] == 3  # auto: up
    assert _drive(EarlyStopping(monitor="val_accuracy", mode="min"), accuracies, key="val_accuracy")[0] == 2
    rising = [1.0, 2.0, 3.0, 4.0]
    assert _drive(EarlyStopping(), rising)[0] == 2
    assert _drive(EarlyStopping(start_from_epoch=2), rising)[0] == 4  # epochs 1, 2 unwatched; 3 is best


def test_early_stopping_baseline_keeps_counting_until_beaten():
    # Keras: an epoch that improves but not on the baseline leaves the count running.
    assert _drive(EarlyStopping(patience=2, baseline=0.5), [0.9, 0.8, 0.85, 0.7])[0] == 3
    assert _drive(EarlyStopping(patience=2), [0.9, 0.8, 0.85, 0.7])[0] == 4


def test_early_stopping_restarts_with_every_fit():
    stop = EarlyStopping(patience=1)
    assert _drive(stop, [1.0, 2.0, 3.0])[0] == 2
    assert _drive(stop, [5.0, 4.0, 3.0])[0] == 3 and stop.stopped_epoch == 0 and stop.best == 3.0


def test_early_stopping_in_fit_stops_where_its_rule_says(backend_name, data):
    net = _net(backend_name)
    stop = EarlyStopping(monitor="val_loss", patience=1, min_delta=0.02)
    history, seen = _fit(net, data, [stop], epochs=40)
    assert 1 < stop.stopped_epoch == len(history) < 40
    replay = EarlyStopping(monitor="val_loss", patience=1, min_delta=0.02)
    assert _drive(replay, [logs["val_loss"] for logs in seen.logs])[0] == stop.stopped_epoch


def test_restore_best_weights_gives_the_best_epochs_weights(backend_name, data):
    net = _net(backend_name)
    stop = EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)
    history, seen = _fit(net, data, [stop], epochs=40, lr=0.5)
    assert stop.stopped_epoch == len(history) < 40  # it stopped, and later epochs' weights differ
    accuracies = [logs["val_accuracy"] for logs in seen.logs]
    assert stop.best_epoch == 1 + int(np.argmax(accuracies)) < len(history)  # argmax: the first best
    _assert_same(_weights(net), seen.weights[stop.best_epoch - 1])


def test_restore_best_weights_also_when_the_epochs_run_out_or_a_user_stops(backend_name, data):
    """Keras 3 restores at the end of training whoever ended it (tf.keras 2: only when it stopped)."""
    class StopAtThree(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                self.model.stop_training = True

    net = _net(backend_name)
    # the highest val_loss is the best here: an epoch before the last, as the loss falls
    stop = EarlyStopping(monitor="val_loss", mode="max", patience=100, restore_best_weights=True)
    history, seen = _fit(net, data, [stop, StopAtThree()], epochs=10)
    assert len(history) == 3 and stop.stopped_epoch == 0
    losses = [logs["val_loss"] for logs in seen.logs]
    assert stop.best_epoch == 1 + int(np.argmax(losses)) < 3
    _assert_same(_weights(net), seen.weights[stop.best_epoch - 1])

    net = _net(backend_name)
    stop = EarlyStopping(monitor="val_loss", mode="max", patience=100, restore_best_weights=True)
    _, seen = _fit(net, data, [stop], epochs=4)
    assert stop.stopped_epoch == 0 and stop.best_epoch < 4
    _assert_same(_weights(net), seen.weights[stop.best_epoch - 1])


def test_a_monitored_value_missing_from_the_logs_is_an_error(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match=r"monitor='val_loss' is not in fit's logs.*validation_data"):
        _net().fit(X, y, epochs=3, callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: monitor='val_acc' is not in"):
        _drive(ReduceLROnPlateau(monitor="val_acc"), [1.0])


@pytest.mark.parametrize("make, message", [
    (lambda: EarlyStopping(mode="largest"), r"mode must be 'auto', 'min' or 'max'"),
    (lambda: EarlyStopping(monitor="seconds"), r"cannot tell whether 'seconds' should go down or up"),
    (lambda: EarlyStopping(patience=-1), r"patience must be an integer >= 0"),
    (lambda: EarlyStopping(min_delta=-0.1), r"min_delta must be a non-negative number"),
    (lambda: ModelCheckpoint(3), r"path must be a str or path"),
    (lambda: ReduceLROnPlateau(factor=1.0), r"factor must be in \(0, 1\)"),
    (lambda: ReduceLROnPlateau(cooldown=1.5), r"cooldown must be an integer >= 0"),
    (lambda: LearningRateScheduler(0.1), r"schedule must be callable"),
    (lambda: StepDecay(0.1, drop=0.5, every=0), r"every must be an integer >= 1"),
    (lambda: CosineDecay(0.1, epochs=10, min_lr=0.2), r"min_lr \(0.2\) is above initial_lr"),
    (lambda: ExponentialDecay(0.0, 0.9), r"initial_lr must be a positive number"),
])
def test_bad_settings_are_refused(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


# ---- ModelCheckpoint -------------------------------------------------------------------
def test_checkpoint_save_best_only_writes_on_improvement_only(tmp_path):
    net = _net()
    checkpoint = ModelCheckpoint(tmp_path / "best-{epoch:02d}-{val_loss:.3f}.npz", save_best_only=True)
    checkpoint.set_model(net)
    for epoch, value in enumerate([1.0, 0.8, 0.9, 0.7, 0.7], start=1):
        checkpoint.on_epoch_end(epoch, {"loss": 0.5, "val_loss": value})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-01-1.000.npz", "best-02-0.800.npz",
                                                          "best-04-0.700.npz"]


def test_checkpoint_in_fit_holds_the_best_epochs_model(backend_name, data, tmp_path):
    net = _net(backend_name)
    checkpoint = ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy", save_best_only=True)
    every = ModelCheckpoint(tmp_path / "epoch-{epoch}.npz")  # no monitor needed: saves every epoch
    history, seen = _fit(net, data, [checkpoint, every], epochs=5, lr=0.5)
    accuracies = [logs["val_accuracy"] for logs in seen.logs]
    best = int(np.argmax(accuracies))
    assert checkpoint.best == accuracies[best]
    _assert_same(_weights(fastnn.load(tmp_path / "best.npz")), seen.weights[best])
    for epoch in range(1, 6):
        _assert_same(_weights(fastnn.load(tmp_path / f"epoch-{epoch}.npz")), seen.weights[epoch - 1])


def test_checkpoint_path_naming_a_value_not_logged_is_an_error(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path / "m-{val_los:.2f}.npz")
    checkpoint.set_model(_net())
    with pytest.raises(ValueError, match=r"names 'val_los', which fit's logs do not hold"):
        checkpoint.on_epoch_end(1, {"loss": 0.5, "val_loss": 0.4})
    assert not list(tmp_path.iterdir())


# ---- schedules ---------------------------------------------------------------------------
def test_schedules_follow_their_formulas():
    assert [StepDecay(0.1, drop=0.5, every=2)(e) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert [ExponentialDecay(0.2, 0.5)(e, 123.0) for e in range(4)] == [0.2, 0.1, 0.05, 0.025]  # lr ignored
    cosine = CosineDecay(0.3, epochs=4, min_lr=0.1)
    assert cosine(0) == 0.3 and cosine(4) == cosine(9) == pytest.approx(0.1)
    assert cosine(2) == pytest.approx(0.2)  # half way: the middle
    assert cosine(1) == pytest.approx(0.1 + 0.2 * (1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        cosine(-1)


def test_scheduler_refuses_a_rate_that_is_not_positive():
    with pytest.raises(ValueError, match=r"the schedule gave 0.0 for epoch 3 \(index 2\)"):
        _drive(LearningRateScheduler(CosineDecay(0.1, epochs=2)), [1.0] * 4)
    with pytest.raises(ValueError, match=r"the schedule gave 'fast'"):
        _drive(LearningRateScheduler(lambda epoch, lr: "fast"), [1.0])


def test_scheduler_hooks_give_keras_indices_and_the_current_rate():
    calls = []

    def schedule(epoch, lr):
        calls.append((epoch, lr))
        return lr * 0.5

    _, lrs = _drive(LearningRateScheduler(schedule), [1.0] * 3, lr=0.8)
    assert calls == [(0, 0.8), (1, 0.4), (2, 0.2)] and lrs == [0.4, 0.2, 0.1]


# ---- ReduceLROnPlateau -----------------------------------------------------------------
def test_plateau_reduces_after_patience_epochs():
    flat = [1.0] * 6
    assert _drive(ReduceLROnPlateau(factor=0.5, patience=2), flat)[1] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    falling = [1.0, 0.9, 0.8, 0.7]
    assert _drive(ReduceLROnPlateau(factor=0.5, patience=1), falling)[1] == [1, 1, 1, 1]
    tiny_steps = [1.0, 0.99995, 0.9999]  # better by less than min_delta (1e-4): no improvement
    assert _drive(ReduceLROnPlateau(factor=0.5, patience=1), tiny_steps)[1] == [1, 0.5, 0.25]
    rising_accuracy = [0.5, 0.6, 0.6]
    assert _drive(ReduceLROnPlateau(monitor="accuracy", factor=0.5, patience=1), rising_accuracy,
                  key="accuracy")[1] == [1, 1, 0.5]


def test_plateau_cooldown_and_min_lr():
    # cooldown 2: the epoch after a cut is not counted; counting resumes the epoch after that
    lrs = _drive(ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2), [1.0] * 6)[1]
    assert lrs == [1, 0.5, 0.5, 0.25, 0.25, 0.125]
    lrs = _drive(ReduceLROnPlateau(factor=0.1, patience=0, min_lr=0.05), [1.0] * 4)[1]
    assert lrs == pytest.approx([1, 0.1, 0.05, 0.05])


def test_plateau_in_fit_changes_the_rate_the_compiled_epoch_uses(backend_name, data):
    """Cut every epoch after the first; the weights match fits of one epoch each at those rates."""
    reduce = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)  # nothing improves
    net = _net(backend_name)
    _, seen = _fit(net, data, [reduce], epochs=4)
    assert seen.lr == [0.2, 0.1, 0.05, 0.025]

    X, y, _, _ = data
    reference, optimizer = _net("numpy"), fastnn.SGD(0.2)
    for lr in [0.2, 0.2, 0.1, 0.05]:
        optimizer.lr = lr
        reference.fit(X, y, epochs=1, batch_size=32, optimizer=optimizer)
    _assert_same(_weights(net), _weights(reference), atol=1e-10)


def test_a_user_callback_stops_training_with_the_others_running(backend_name, data):
    stops = LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(stops.model, "stop_training", epoch == 2))
    reduce = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    history, seen = _fit(_net(backend_name), data, [stops, reduce], epochs=10)
    assert len(history) == 2 and seen.lr == [0.2, 0.1]


# ---- these need fit to call on_epoch_begin and log "lr" (the lead's edit to model.py) -----------
def test_fit_calls_on_epoch_begin_before_each_epoch(data):
    X, y, _, _ = data
    calls = []
    hooks = LambdaCallback(on_epoch_begin=lambda epoch, logs: calls.append(("begin", epoch)),
                           on_epoch_end=lambda epoch, logs: calls.append(("end", epoch)))
    _net().fit(X, y, epochs=2, batch_size=32, callbacks=[hooks])
    assert calls == [("begin", 1), ("end", 1), ("begin", 2), ("end", 2)]


@pytest.mark.parametrize("schedule", [StepDecay(0.3, drop=0.5, every=2), ExponentialDecay(0.3, 0.7),
                                      CosineDecay(0.3, epochs=5, min_lr=0.01)], ids=repr)
def test_scheduler_in_fit_sets_each_epochs_rate(backend_name, data, schedule):
    net = _net(backend_name)
    history, seen = _fit(net, data, [LearningRateScheduler(schedule)], epochs=5, lr=1.0)
    expected = [schedule(e) for e in range(5)]
    assert seen.lr == expected
    assert history["lr"] == expected  # logs["lr"]: the rate the epoch trained at


def test_scheduled_rates_reach_the_compiled_epoch(data):
    """numba's compiled epoch and the numpy reference agree (float64) under a schedule that matters."""
    pytest.importorskip("numba", reason="numba is not installed: the compiled epoch is not tested")
    schedule = StepDecay(0.4, drop=0.25, every=1)
    runs = {}
    for name in ("numpy", "numba"):
        net = _net(name)
        _fit(net, data, [LearningRateScheduler(schedule)], epochs=3, lr=1.0)
        runs[name] = _weights(net)
    _assert_same(runs["numba"], runs["numpy"], atol=1e-10)
    unscheduled = _net("numpy")
    _fit(unscheduled, data, [], epochs=3, lr=0.4)
    assert not np.allclose(_weights(unscheduled)[0], runs["numpy"][0], atol=1e-6)  # the schedule mattered


def test_fit_checkpoint_is_a_callback_that_runs_first(tmp_path):
    """fit(checkpoint=) saves through a callback before the user's own: the first user callback
    of epoch 1 finds the file, and resuming after a stop at epoch 2 goes on from there."""
    path = tmp_path / "ckpt.npz"
    seen = []
    X = np.random.default_rng(0).standard_normal((60, 4))
    y = (X[:, 0] > 0).astype(int)
    net = fastnn.Sequential(fastnn.Dense(4, 6), fastnn.Tanh(), fastnn.Dense(6, 2), backend="numpy", seed=1)
    look = fastnn.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(path.exists()))
    stop = fastnn.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(net, "stop_training", epoch == 2))
    net.fit(X, y, epochs=5, batch_size=8, lr=0.1, checkpoint=path, callbacks=[look, stop])
    assert seen == [True, True]
    again = fastnn.Sequential(fastnn.Dense(4, 6), fastnn.Tanh(), fastnn.Dense(6, 2), backend="numpy", seed=1)
    history = again.fit(X, y, epochs=3, batch_size=8, lr=0.1, checkpoint=path, resume=True)
    assert history["epoch"] == [1, 2, 3] and again.epochs_trained == 3
