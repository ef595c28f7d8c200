"""Reading an experiment's raw JSON results back (``--report-only``), several files to merge."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from focusformer_fast.utils.cli import UsageError


def read_raw(paths: Sequence[str]) -> list[dict[str, Any]]:
    """The parsed contents of each raw results file; :class:`UsageError` naming one that cannot be read."""
    parts = []
    for path in paths:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise UsageError(f"raw results {path!r} are unreadable: {exc}") from None
    return parts
