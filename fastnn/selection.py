"""Backend selection: the registry of backends by name, the default and its reasons.

    fastnn.get_backend("numba")          # an instance, created on first use
    fastnn.set_backend("numba")          # the default for this context
    with fastnn.use_backend("cupy"):     # a scoped default
        ...
    fastnn.available_backends()          # {"numpy": (True, ""), "cupy": (False, "why")}
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from .backend import Backend, BackendLike, BackendUnavailable


# ---- the registry ----------------------------------------------------------

#: name -> "module:Class", imported on first use.
_BUILTIN: dict[str, str | type[Backend]] = {
    "numpy": "fastnn.backends.numpy_backend:NumpyBackend",
    "numba": "fastnn.backends.numba.backend:NumbaBackend",
    "cupy": "fastnn.backends.cupy.backend:CupyBackend",
}
#: What to install when a backend's package is missing.
_INSTALL_HINTS = {
    "numba": "pip install 'fastnn[numba]'",
    "cupy": "pip install 'fastnn[cuda12]' (or 'fastnn[cuda13]', matching your CUDA)",
}
_ENTRY_POINT_GROUP = "fastnn.backends"
_instances: dict[tuple[str, tuple[tuple[str, Any], ...]], Backend] = {}
_current: contextvars.ContextVar[str | Backend | None] = contextvars.ContextVar("fastnn_backend", default=None)


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Register ``"module:Class"`` (or a class) as backend ``name``."""
    _BUILTIN[name] = target
    for key in [key for key in _instances if key[0] == "auto"]:
        del _instances[key]  # "auto" may resolve to it now


def _known():
    known = dict(_BUILTIN)
    try:
        for ep in metadata.entry_points(group=_ENTRY_POINT_GROUP):
            known.setdefault(ep.name, ep.value)
    except Exception:  # a broken third-party distribution must not break fastnn
        pass
    return known


def backend_names() -> list[str]:
    """The names ``get_backend`` knows (built in, registered, from entry points), and ``"auto"``;
    imports no backend."""
    return sorted(_known()) + ["auto"]


def _split(name):
    """``"cupy:1"`` -> ``("cupy", {"device": 1})``."""
    base, _, device = str(name).partition(":")
    options = {}
    if device:
        if not device.isdigit():
            raise ValueError(f"backend {name!r}: the part after ':' must be a device number")
        options["device"] = int(device)
    return base.strip().lower(), options


def _load_class(base):
    known = _known()
    if base not in known:
        raise ValueError(f"unknown backend {base!r}; known backends: {', '.join(backend_names())}")
    target = known[base]
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        reason = _with_hint(base, str(exc)) if base in _INSTALL_HINTS else \
            f"{exc}; install the package that provides it"
        raise BackendUnavailable(f"backend {base!r} is unavailable: {reason}", reason) from exc
    return getattr(module, attr)


def _default_name():
    return _current.get() or os.environ.get("FASTNN_BACKEND") or "auto"


def _auto_choice():
    """``(name, why)`` of ``"auto"``: numba where it is usable, else numpy. Never cupy: a small job
    on a GPU pays compile and launch latency it cannot win back, so the GPU is used when named."""
    try:
        reason = _unavailable_reason("numba", _load_class("numba"))
    except BackendUnavailable as exc:
        reason = exc.reason
    if reason:
        return "numpy", f"numba is unavailable ({reason})"
    return "numba", "numba is installed (the GPU backend, cupy, is used only when named)"


def default_backend() -> tuple[str, str]:
    """``(name, why)``: the backend an unspecified ``backend=`` resolves to here, and why.

    The scoped default (``use_backend``/``set_backend``) wins, then ``FASTNN_BACKEND``, then
    ``"auto"``: numba where it is usable, else numpy. Every entry point (``Sequential``,
    ``fastnn.load``, the estimators, the ``fastnn`` command) follows this one rule.
    """
    scoped = _current.get()
    if scoped is not None:
        name = scoped if isinstance(scoped, str) else scoped.name
        source = "set by set_backend/use_backend"
    elif os.environ.get("FASTNN_BACKEND"):
        name, source = os.environ["FASTNN_BACKEND"], "set by FASTNN_BACKEND"
    else:
        name, why = _auto_choice()
        return name, f"auto: {why}"
    if _split(name)[0] == "auto":
        resolved, why = _auto_choice()
        return resolved, f"auto ({source}): {why}"
    return name, source


def get_backend(name: BackendLike = None, **options: Any) -> Backend:
    """The backend ``name`` (default: the current one), created on first use.

    ``name`` may be a :class:`Backend` instance (returned as is), a registered
    name, ``"auto"`` (numba if usable, else numpy; see :func:`default_backend`) or
    ``"cupy:N"``. None: the default of :func:`default_backend`.
    Keyword options (e.g. ``num_threads=2`` for numba) go to the constructor.
    Raises ``ValueError`` for an unknown name and :class:`BackendUnavailable`
    when the backend is known but cannot run here.
    """
    if name is None:
        name = _default_name()
        if _current.get() is None and os.environ.get("FASTNN_BACKEND"):
            # the name came from the environment: say so when it is wrong
            try:
                return get_backend(name, **options)
            except (ValueError, BackendUnavailable) as exc:
                raise type(exc)(f"FASTNN_BACKEND={name!r}: {exc}") from None
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend, got {type(name).__name__}")
    base, parsed = _split(name)
    options = {**parsed, **options}
    key = (base, tuple(sorted(options.items())))
    if key in _instances:  # "auto" too, once resolved: every Sequential() asks (entry points are slow)
        return _instances[key]
    resolved = _auto_choice()[0] if base == "auto" else base
    resolved_key = (resolved, key[1])
    if resolved_key not in _instances:
        cls = _load_class(resolved)
        reason = _unavailable_reason(resolved, cls)
        if reason:
            raise BackendUnavailable(f"backend {resolved!r} is unavailable: {reason}", reason)
        _instances[resolved_key] = cls(**options)
    _instances[key] = _instances[resolved_key]
    return _instances[key]


def _with_hint(base, reason):
    hint = _INSTALL_HINTS.get(base)
    return reason + (f"; {hint}" if hint else "")


def _unavailable_reason(base, cls):
    """Why backend ``base`` cannot run here, with what to install; None when it can."""
    check = getattr(cls, "unavailable_reason", None)
    reason = check() if check is not None else None
    return _with_hint(base, reason) if reason else None


def set_backend(name: str | Backend) -> Backend:
    """Make ``name`` the default backend of this context; returns the backend."""
    backend = get_backend(name)
    _current.set(name if isinstance(name, str) else backend)
    return backend


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """``with use_backend("numba"):`` scopes the default backend; nests."""
    backend = get_backend(name)
    token = _current.set(name if isinstance(name, str) else backend)
    try:
        yield backend
    finally:
        _current.reset(token)


def available_backends() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every known backend; imports nothing heavy."""
    status = {}
    for base in sorted(_known()):
        try:
            reason = _unavailable_reason(base, _load_class(base))
        except BackendUnavailable as exc:
            reason = exc.reason
        status[base] = (not reason, reason or "")
    return status
