"""The compiled whole-epoch trainer of the numba backend (work in progress: returns None)."""


def make_epoch_trainer(backend, net, loss, optimizer):
    """A callable training one epoch in one compiled call, or None (layer-by-layer fallback)."""
    return None
