"""The weight of each row ``Sequential.fit`` trains on: ``sample_weight`` × ``class_weight``."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from .training import Training

ClassWeight = dict[int, float] | Literal["balanced"]


def training_weights(net: Training, weights: NDArray[np.float64] | None, class_weight: ClassWeight | None,
                     T: Any, labels: Any) -> NDArray[np.float64] | None:
    """The weight of each training row (host float64), or None: ``weights`` (checked
    ``sample_weight``, or None) times the ``class_weight`` of each row's class."""
    if class_weight is not None:
        per_row = class_weight_rows(class_weight, net.backend.to_numpy(T), net.backend.to_numpy(labels), net.n_out)
        weights = per_row if weights is None else weights * per_row
    if weights is not None and not np.any(weights > 0):
        raise ValueError("fit: every training row weighs zero (sample_weight × class_weight, after "
                         "validation_split); nothing to train on")
    return weights


def class_weight_rows(class_weight: ClassWeight, T: NDArray[Any], labels: NDArray[Any],
                      n_out: int) -> NDArray[np.float64]:
    """``class_weight`` (``{class: weight}`` or ``"balanced"``) as one weight per row."""
    from .metrics import _one_hot, n_classes as classes_of

    if not _one_hot(T):
        raise ValueError("class_weight: needs class labels (1-D y) or one-hot target rows; y here has "
                         "target rows that are not one-hot")
    n_classes = classes_of(n_out)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight: expected a dict {{class: weight}} or 'balanced', got {class_weight!r}")
        present, counts = np.unique(labels, return_counts=True)
        per_class = np.zeros(n_classes)
        per_class[present] = len(labels) / (len(present) * counts)  # scikit-learn's "balanced"
    elif isinstance(class_weight, dict):
        per_class = np.ones(n_classes)
        for label, weight in class_weight.items():
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < n_classes:
                raise ValueError(f"class_weight: {label!r} is not a class of this model (classes 0..{n_classes - 1})")
            if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"class_weight: the weight of class {label} must be a finite number >= 0, "
                                 f"got {weight!r}")
            per_class[label] = weight
    else:
        raise TypeError(f"class_weight: expected a dict {{class: weight}} or 'balanced', got "
                        f"{type(class_weight).__name__}")
    return per_class[labels]
