"""The folders where numba's disk cache would keep this package's kernels, found without importing
numba (a job that trains on the reference ops while its kernels compile elsewhere never needs it).

numba tries its cache locators in turn (``numba/core/caching.py``, ``_CacheImpl._locator_classes``)
and takes the first folder that takes a file: ``$NUMBA_CACHE_DIR/<subpath>``, the ``__pycache__``
beside the kernels' file, ``<numba's folder in the user's cache>/<subpath>``. Any of them taking a
file here means numba caches the kernels; none of them is not proof of the opposite (a
``.numba_config.yaml``, Windows' folders): :func:`cache.kernels_cacheable` then asks numba.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))  # the folder of kernels.py


def candidates() -> list[str]:
    """The folders numba would try for the kernels beside this file, in its order (Windows'
    user-wide folder left out: its rule needs the Windows API)."""
    subpath = f"{os.path.basename(_HERE)}_{hashlib.sha1(_HERE.encode()).hexdigest()}"  # noqa: S324 - numba's name
    folders = [os.path.join(os.environ["NUMBA_CACHE_DIR"], subpath)] if os.environ.get("NUMBA_CACHE_DIR") else []
    folders.append(os.path.join(_HERE, "__pycache__"))
    if sys.platform == "darwin":
        folders.append(os.path.join(os.path.expanduser("~/Library/Caches"), "numba", subpath))
    elif not sys.platform.startswith("win"):
        folders.append(os.path.join(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "numba", subpath))
    return folders


def one_takes_files() -> bool:
    """True when a folder of :func:`candidates` takes a file, made as numba makes it
    (``_CacheLocator.ensure_cache_path``: permissions alone miss read-only mounts)."""
    for folder in candidates():
        try:
            os.makedirs(folder, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
            return True
        except OSError:
            continue
    return False
