"""``python -m focusformer_fast``: the package's commands, and how to run each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from focusformer_fast.utils.cli import Parser, add_version, run_cli

COMMANDS = (
    ("train", "train a weight-sharing ViT supernet with an architecture sampler (digits, CIFAR-100, your images)"),
    ("search", "specialize a trained run to budgets (FLOPs, params, latency); export the chosen subnets"),
    ("profile", "measure a latency table of a search space on this device, or time one subnet"),
    ("export", "convert an exported subnet to ONNX or a torch.export program, checked before writing"),
    ("finetune", "fine-tune an exported subnet with timm's recipe (optionally distilling from a run)"),
)


def usage() -> str:
    """The command list: module form, console script, what it does."""
    lines = ["commands (each takes --help):"]
    for name, what in COMMANDS:
        lines += [f"  python -m focusformer_fast.{name}  (or: focusformer-{name})", f"      {what}"]
    lines.append("start: python -m focusformer_fast.train --data DIR --steps 200; it ends with the search command")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m focusformer_fast", description="One-shot NAS of vision transformers.",
                    epilog=usage(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(parser)
    return parser


def _list(argv: Sequence[str] | None) -> None:
    _parser().parse_args(argv)
    print(usage())


def main(argv: Sequence[str] | None = None) -> int:
    """Print the commands; ``--version``; anything else is a usage error (exit 2)."""
    return run_cli(lambda: _list(argv))


if __name__ == "__main__":
    sys.exit(main())
