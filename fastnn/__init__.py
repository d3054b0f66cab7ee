"""fastnn: neural networks from first principles, on fast pluggable backends.

>>> import fastnn
>>> net = fastnn.Sequential(fastnn.Dense(784, 30), fastnn.Sigmoid(),
...                         fastnn.Dense(30, 10), fastnn.Sigmoid(), backend="numba", seed=0)
>>> net.fit(X, y, epochs=30, batch_size=10, loss="mse", lr=3.0)
"""
from .backend import (ACTIVATIONS, Backend, BackendUnavailable, available_backends, default_backend,
                      get_backend, register_backend, set_backend, use_backend)
from .callbacks import (Callback, EarlyStopping, LambdaCallback, LearningRateScheduler, ModelCheckpoint,
                        ReduceLROnPlateau)
from .gradcheck import gradcheck
from .history import History
from .io import ModelFileError, load
from .layers import (GELU, Dense, Dropout, Identity, LeakyReLU, ReLU, Rescale, Sigmoid, SiLU, Softmax, Softplus,
                     Tanh)
from .losses import BinaryCrossEntropy, CrossEntropy, Loss, MSE, get_loss
from .model import Sequential, TrainingDiverged
from .optim import SGD, Adam, AdamW, RMSprop
from .validation import UnscaledInputWarning

__version__ = "0.1.0"  # the one place the version is defined: pyproject.toml reads it from here


def __getattr__(name):
    # Imported on first use, so `import fastnn` stays quick: the estimators' input checks and
    # epochs; fastnn.datasets brings urllib, gzip, hashlib.
    if name == "MLPClassifier":
        from .estimator import MLPClassifier
        return MLPClassifier
    if name == "MLPRegressor":
        from .estimator_regressor import MLPRegressor
        return MLPRegressor
    if name == "datasets":
        import importlib  # not `from . import datasets`: that looks the name up here again

        return importlib.import_module(".datasets", __name__)  # sets the attribute: once only
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")

__all__ = [
    "ACTIVATIONS", "Adam", "AdamW", "Backend", "BackendUnavailable", "BinaryCrossEntropy", "Callback", "CrossEntropy", "EarlyStopping",
    "Dense", "Dropout", "GELU", "History", "LambdaCallback", "LearningRateScheduler", "LeakyReLU", "Identity", "Loss", "MLPClassifier", "MLPRegressor", "MSE", "ModelCheckpoint", "ModelFileError", "RMSprop", "ReduceLROnPlateau", "ReLU", "Rescale", "SGD",
    "Sequential", "SiLU", "Sigmoid", "Softmax", "Softplus", "Tanh", "TrainingDiverged", "UnscaledInputWarning",
    "available_backends", "default_backend", "gradcheck", "get_backend", "get_loss", "load", "register_backend", "set_backend",
    "use_backend",
]
