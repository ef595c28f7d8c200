"""``python -m focusformer_fast.export DIR --format onnx|pt2``: an export directory for deployment.

* ``onnx``: ``torch.onnx.export`` (the dynamo exporter; the ``[onnx]`` extra: onnx, onnxscript,
  onnxruntime), checked with onnxruntime on CPU;
* ``pt2``: a ``torch.export`` program (``torch.export.load(FILE).module()`` runs it).

Both take images ``[batch, C, H, W]`` with a dynamic batch dimension and return logits
``[batch, num_classes]``. Before anything is written the serialized file is read back, run on
random images at two batch sizes that differ from the tracing one, and compared with the PyTorch
model; a difference above ``--atol`` is an error. The file is written atomically, by default as
``DIR/model.onnx`` or ``DIR/model.pt2``; an existing file is replaced only with ``--force``::

    python -m focusformer_fast.export subnets/budget-2M --format onnx
    python -m focusformer_fast.export subnets/budget-2M --format pt2 --output deploy/subnet.pt2
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from focusformer_fast.models.export import load
from focusformer_fast.utils.atomic_files import atomic_write
from focusformer_fast.utils.cli import Parser, UsageError, add_version, run_cli, state_defaults

PROG = "python -m focusformer_fast.export"
FORMATS = ("onnx", "pt2")
ONNX_EXTRA = ("onnx", "onnxscript", "onnxruntime")
TRACE_BATCH = 2
CHECK_BATCHES = (1, 5)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Convert an exported subnet (config.json + model.safetensors) to ONNX or a "
                                      "torch.export program, with a dynamic batch dimension, checked before writing.")
    p.add_argument("directory", help="an export directory (python -m focusformer_fast.search --export, or finetune)")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (needs the [onnx] extra) or pt2")
    p.add_argument("--output", metavar="FILE", help="where to write (default DIR/model.onnx or DIR/model.pt2)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed |converted - PyTorch| logit difference on the check inputs (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check images (default 0)")
    add_version(p)
    return state_defaults(p)


class _Logits(nn.Module):
    """``model``'s forward with the images as its only argument (what is exported)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def _batch_dim() -> dict[str, dict[int, torch.export.Dim]]:
    return {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}


def to_onnx(model: nn.Module, example: Tensor) -> tuple[bytes, Callable[[Tensor], Tensor]]:
    """The ONNX file of ``model`` (dynamic batch) and a runner of those bytes through onnxruntime (CPU)."""
    import onnxruntime as ort

    program = torch.onnx.export(_Logits(model).eval(), (example,), dynamo=True, dynamic_shapes=_batch_dim(),
                                input_names=["images"], output_names=["logits"], verbose=False)
    buf = io.BytesIO()
    program.save(buf)
    data = buf.getvalue()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(images: Tensor) -> Tensor:
        return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])

    return data, run


def to_pt2(model: nn.Module, example: Tensor) -> tuple[bytes, Callable[[Tensor], Tensor]]:
    """The ``torch.export`` program of ``model`` (dynamic batch), serialized, and a runner of it reloaded."""
    program = torch.export.export(_Logits(model).eval(), (example,), dynamic_shapes=_batch_dim())
    buf = io.BytesIO()
    torch.export.save(program, buf)
    data = buf.getvalue()
    reloaded = torch.export.load(io.BytesIO(data)).module()
    return data, reloaded


def convert(directory: str, fmt: str, output: str | None = None, *, force: bool = False, atol: float = 1e-4,
            seed: int = 0) -> tuple[Path, float]:
    """Convert, check and write; returns the file written and the largest logit difference seen.

    Raises :class:`UsageError` for a bad directory, a missing extra, an existing output without
    ``force``, or a converted model that differs from the PyTorch one by more than ``atol``.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    if not atol > 0:
        raise UsageError(f"--atol={atol} must be > 0")
    if fmt == "onnx":
        missing = [m for m in ONNX_EXTRA if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(f"--format onnx needs the [onnx] extra ({', '.join(missing)} not installed): "
                             f"pip install 'focusformer-fast[onnx]'")
    out = Path(output) if output else Path(directory) / f"model.{fmt}"
    if out.exists() and not force:
        raise UsageError(f"output {str(out)!r} already exists; pass --force to replace it or another --output")
    try:
        model = load(directory).float()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    c, h, w = model.pretrained_cfg["input_size"]
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(TRACE_BATCH, c, h, w, generator=gen)
    data, run = (to_onnx if fmt == "onnx" else to_pt2)(model, example)
    worst = 0.0
    for b in CHECK_BATCHES:
        images = torch.randn(b, c, h, w, generator=gen)
        with torch.no_grad():
            want, got = model(images), run(images)
        if got.shape != want.shape:
            raise UsageError(f"the {fmt} model returns shape {tuple(got.shape)} at batch {b}; "
                             f"PyTorch returns {tuple(want.shape)}")
        diff = float((got - want).abs().max())
        worst = max(worst, diff)
        if not diff <= atol:
            raise UsageError(f"the {fmt} model differs from PyTorch by {diff:.3g} at batch {b} (> --atol {atol:g}); "
                             f"nothing written")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(data))
    return out, worst


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    def work() -> None:
        args = build_parser().parse_args(argv)
        out, worst = convert(args.directory, args.format, args.output, force=args.force, atol=args.atol,
                             seed=args.seed)
        print(f"wrote {out} ({args.format}, dynamic batch; max |logit difference| vs PyTorch {worst:.2g} "
              f"at batch {' and '.join(map(str, CHECK_BATCHES))})")

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
