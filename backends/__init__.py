"""fastnn's backends, one module each (imported lazily by ``fastnn.get_backend``).

This folder is installed as ``fastnn.backends`` (``package-dir`` in
pyproject.toml). Imported under any other name (``import backends`` from the
repository root) it would be a second copy with its own registry and caches,
so it refuses.
"""
if __name__ != "fastnn.backends":
    raise ImportError(
        f"this package must be imported as 'fastnn.backends', not {__name__!r}; "
        "install fastnn (pip install -e .) and import fastnn"
    )
