"""The Triton GEMMs compiled ahead of time for an H100/H200 (sm_90a), no GPU needed: at the widths
of autoformer-t blocks (embed 216, 240; MLP hidden 756, 840), in bfloat16 and float32 (TF32)
operands, the forward, dX and dW kernels each copy their tiles asynchronously inside the main
loop (``cp.async`` or TMA), through a shared-memory ring of at least two stages, multiply with
``wgmma``, and spill no register (``ptxas -v``).

The compile runs in a subprocess without ``TRITON_INTERPRET`` (the interpreter replaces the JIT
functions); see ``focusformer_fast.kernels.aot`` for what each figure means.
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

_SCRIPT = """
import json, sys, torch
from focusformer_fast.kernels import aot
rows = aot.table({widths}, [getattr(torch, d) for d in {dtypes}])
json.dump(rows, sys.stdout)
"""


@pytest.fixture(scope="module")
def compiled():
    """``(kernel, width, dtype) -> summary`` of every GEMM variant, compiled for sm_90a."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT.format(widths=WIDTHS, dtypes=DTYPES)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {(r["kernel"], r["width"], r["dtype"]): r for r in json.loads(proc.stdout)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_gemm_is_pipelined_on_wgmma_without_spills(compiled, kernel, width, dtype):
    row = compiled[(kernel, width, dtype)]
    assert row["loop_async"] and row["async_copies"] > 0, f"no async copy in the main loop: {row}"
    assert row["stages"] >= 2, f"main loop not multi-buffered: {row}"
    assert row["wgmma"] > 0, f"no wgmma: {row}"
    assert row["spill_bytes"] == 0, f"register spills: {row}"
