"""The op tables: every activation and optimizer update written once (``activations.py``,
``optimizers.py``), with ``symbolic.py`` to evaluate a formula on arrays or print it as kernel
source. The reference backend, the numba kernels, the compiled epoch and the CUDA kernels are all
made from these entries; an entry's code (its position in its table) is the one kernels use."""
from . import activations, optimizers
from .symbolic import ArrayMath

__all__ = ["ArrayMath", "activations", "optimizers"]
