"""Backend registry and selection for the sliced ops.

A backend is a module-like object exposing some of the op functions named in
:data:`OPS` with the exact signatures of :mod:`focusformer_fast.ops.reference`.
Backends register themselves with :func:`register_backend`; the public ops in
:mod:`focusformer_fast.ops` ask :func:`resolve` for the implementation at call
time, so one process can compare backends.

Selection, in order of precedence:
  1. the innermost :func:`set_backend` context,
  2. the ``FOCUSFORMER_BACKEND`` environment variable,
  3. ``"auto"``.

``auto`` picks, per op and per device, the first available backend in
:data:`AUTO_ORDER` that implements the op. An explicit backend that is not
available raises and lists the available ones; an explicit backend that is
available but lacks one op (e.g. ``cpp`` has no attention kernel) runs the
reference for that op.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

OPS = ("sliced_linear", "sliced_layernorm", "sliced_attention")
BACKENDS = ("torch", "cpp", "triton", "cuda")
AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("torch",)}
ENV_VAR = "FOCUSFORMER_BACKEND"


@dataclass(frozen=True)
class Backend:
    """One registered backend.

    Attributes:
        name: one of :data:`BACKENDS`.
        impl: object whose attributes are the op functions it implements.
        devices: device types (``"cpu"``, ``"cuda"``) whose tensors it accepts.
        available: returns ``(ok, reason)``; ``reason`` explains a ``False``.
    """

    name: str
    impl: object
    devices: tuple[str, ...]
    available: Callable[[], tuple[bool, str]]

    def implements(self, op: str) -> bool:
        return hasattr(self.impl, op)


_registry: dict[str, Backend] = {}
_local = threading.local()


def register_backend(backend: Backend) -> None:
    """Add or replace a backend in the registry."""
    if backend.name not in BACKENDS:
        raise ValueError(f"backend name {backend.name!r} is not one of {BACKENDS}")
    _registry[backend.name] = backend


def available_backends(device_type: str | None = None) -> list[str]:
    """Names of registered backends that can run now (on ``device_type`` if given)."""
    names = []
    for name in BACKENDS:
        b = _registry.get(name)
        if b is None or (device_type is not None and device_type not in b.devices):
            continue
        if b.available()[0]:
            names.append(name)
    return names


def _check_name(name: str) -> str:
    allowed = ("auto",) + BACKENDS
    if name not in allowed:
        raise ValueError(f"backend={name!r} is not a backend; allowed: {', '.join(allowed)}")
    return name


def current_backend() -> str:
    """The backend name in force: context, then environment, then ``"auto"``."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return _check_name(os.environ.get(ENV_VAR, "auto").strip() or "auto")


@contextlib.contextmanager
def set_backend(name: str) -> Iterator[None]:
    """Run the enclosed ops on backend ``name`` (``auto`` or one of :data:`BACKENDS`).

    Raises ``ValueError`` at entry if the backend is unknown or cannot run here.
    """
    _check_name(name)
    if name != "auto":
        _require(name, None)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _require(name: str, device_type: str | None) -> Backend:
    b = _registry.get(name)
    reason = "not registered"
    if b is not None:
        ok, reason = b.available()
        if ok and (device_type is None or device_type in b.devices):
            return b
        if ok:
            reason = f"it runs on {', '.join(b.devices)} tensors, not {device_type}"
    avail = available_backends(device_type)
    raise ValueError(
        f"backend {name!r} is not available ({reason}); available"
        f"{' on ' + device_type if device_type else ''}: {', '.join(avail) or 'none'}"
    )


def resolve(op: str, device_type: str) -> Callable:
    """The implementation of ``op`` for tensors on ``device_type`` under the current backend."""
    name = current_backend()
    if name == "auto":
        for cand in AUTO_ORDER.get(device_type, ("torch",)):
            b = _registry.get(cand)
            if b is not None and device_type in b.devices and b.implements(op) and b.available()[0]:
                return getattr(b.impl, op)
        return getattr(_registry["torch"].impl, op)
    b = _require(name, device_type)
    if b.implements(op):
        return getattr(b.impl, op)
    return getattr(_registry["torch"].impl, op)
