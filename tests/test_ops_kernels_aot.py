"""The Triton kernels compiled ahead of time for an H100/H200 (sm_90a), no GPU needed.

* At the widths of autoformer-t blocks that are not multiples of 16 (embed 216, MLP hidden 756,
  840) and at 240, in bfloat16 and float32 (TF32) operands, the forward, dX and dW GEMMs each
  copy their tiles asynchronously inside the main loop (``cp.async`` or TMA), through a
  shared-memory ring of at least two stages, multiply with ``wgmma``, and spill no register.
* Every GEMM variant the blocks of autoformer-t, -s and -b launch at batch 128 under bf16
  autocast (each block shape of each preset maps to one of a handful of variants) does the same,
  and no kernel of a block spills.
* A fresh process compiles a bounded number of variants for a whole preset: widths map to
  alignment classes, not to variants of their own.

The compile runs in a subprocess without ``TRITON_INTERPRET`` (the interpreter replaces the JIT
functions); ``focusformer_fast.ops.kernels.aot`` says what each figure means.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

WIDTHS = [216, 240, 756, 840]
DTYPES = ["bfloat16", "float32"]
KERNELS = ["fwd", "dx", "dw"]
PRESETS = ["autoformer-t", "autoformer-s", "autoformer-b"]
# distinct compiled variants of a preset's blocks (GEMMs, layernorm, attention); 117 Triton
# variants (and ~105 tuned configs) were compiled for an autoformer-t stream before widths were
# mapped to alignment classes and fixed configs
MAX_VARIANTS = {"autoformer-t": 24, "autoformer-s": 18, "autoformer-b": 18}

_WIDTHS_SCRIPT = f"""
import json, sys, torch
from focusformer_fast.ops.kernels import aot
json.dump(aot.table({WIDTHS}, [getattr(torch, d) for d in {DTYPES}]), sys.stdout)
"""
_PRESETS_SCRIPT = f"""
import json, sys
from focusformer_fast.ops.kernels import aot
rows = [{{"kernel": key[0], "presets": sorted({{s.split(":")[0] for s in shapes}}),
          **aot.summarize(aot.compile_launch(launch))}} for key, (launch, shapes) in aot.preset_variants({PRESETS}).items()]
json.dump(rows, sys.stdout)
"""


def _compile(script: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def widths():
    """Rows of ``aot.table``: the biased GEMMs at ``WIDTHS`` x ``DTYPES``."""
    return _compile(_WIDTHS_SCRIPT)


@pytest.fixture(scope="module")
def variants():
    """One row per distinct variant the blocks of ``PRESETS`` launch, with the presets that launch it."""
    return _compile(_PRESETS_SCRIPT)


def assert_pipelined(row):
    assert row["loop_async"] and row["async_copies"] > 0, f"no async copy in the main loop: {row}"
    assert row["stages"] >= 2, f"main loop not multi-buffered: {row}"
    assert row["wgmma"] > 0, f"no wgmma: {row}"
    assert row["spill_bytes"] == 0, f"register spills: {row}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_gemm_is_pipelined_on_wgmma_without_spills(widths, kernel, width, dtype):
    rows = [r for r in widths if (r["kernel"], r["width"], r["dtype"]) == (kernel, width, dtype)]
    assert len(rows) == 1
    assert_pipelined(rows[0])


def test_every_preset_gemm_variant_is_pipelined_and_no_block_kernel_spills(variants):
    gemms = [r for r in variants if r["kernel"].rsplit(".", 2)[-2] == "linear" and
             r["kernel"].endswith(("_fwd_kernel", "_dx_kernel", "_dw_kernel"))]
    assert {r["kernel"].rsplit(".", 1)[-1] for r in gemms} == {"_fwd_kernel", "_dx_kernel", "_dw_kernel"}
    for row in gemms:
        assert_pipelined(row)
    spilled = [r for r in variants if r["spill_bytes"]]
    assert not spilled, spilled


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_compiles_a_bounded_number_of_variants(variants, preset):
    count = sum(preset in r["presets"] for r in variants)
    assert 0 < count <= MAX_VARIANTS[preset], count
