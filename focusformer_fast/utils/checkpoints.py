"""Checkpoint files that verify what they read back, keep the one before, and leave no debris.

A checkpoint file is ``MAGIC`` (8 bytes), the SHA-256 of the payload (32 bytes), then the payload:
a ``torch.save`` of a dict. :func:`save_checkpoint` writes it atomically and keeps the file it
replaces as ``<name>.prev<suffix>`` (e.g. ``checkpoint.prev.pt``), so one damaged or half-written
latest file never costs the run; :func:`load_checkpoint` refuses a file whose payload does not
match its checksum, in one line that names the file and, when there is one, the previous
checkpoint to resume from. Temporary files left by a kill during a write are removed by the next
write or read in the same directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from focusformer_fast.utils.atomic_files import atomic_write

MAGIC = b"FFCKPT\x00\x01"
_DIGEST = 32


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or not one of ours; the message says which and what to do."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted atomic write of ``path`` left beside it; returns them."""
    p = Path(path)
    stale = sorted(p.parent.glob(f".{p.name}.*.tmp")) + sorted(p.parent.glob(f".{previous_path(p).name}.*.tmp"))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` with its checksum, atomically; the replaced file becomes the previous one.

    The latest file exists at every moment: the previous one is a hard link (a copy where links
    are not supported) made before the new file is moved into place.
    """
    p = Path(path)
    remove_stale_temporaries(p)
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getbuffer()
    digest = hashlib.sha256(body).digest()
    if p.is_file():
        prev = previous_path(p)
        try:
            tmp_link = prev.with_name(f".{prev.name}.link.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp_link.unlink()
            os.link(p, tmp_link)
            os.replace(tmp_link, prev)
        except OSError:
            atomic_write(prev, lambda f: f.write(p.read_bytes()))

    def write(f: Any) -> None:
        f.write(MAGIC)
        f.write(digest)
        f.write(body)

    return atomic_write(p, write)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The payload :func:`save_checkpoint` wrote to ``path``, after verifying its checksum (on CPU).

    Raises :class:`CheckpointError` (one line naming the file, and the previous checkpoint to
    resume from when it exists) for a missing, truncated, damaged or foreign file.
    """
    p = Path(path)
    remove_stale_temporaries(p)
    prev = previous_path(p)
    hint = f"; resume from the previous checkpoint with --resume {prev}" if prev.is_file() and prev != p else ""
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read ({exc.strerror or exc}){hint}") from None
    header = len(MAGIC) + _DIGEST
    if len(data) < header or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"checkpoint {str(p)!r} is corrupt or not a focusformer_fast checkpoint "
                              f"(no checkpoint header){hint}")
    body = memoryview(data)[header:]
    if hashlib.sha256(body).digest() != data[len(MAGIC):header]:
        raise CheckpointError(f"checkpoint {str(p)!r} is damaged: its contents do not match its checksum{hint}")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # the checksum matched: a file of another torch or another program
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be unpickled ({type(exc).__name__}: {first}){hint}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {str(p)!r} is not a focusformer_fast checkpoint{hint}")
    return payload
