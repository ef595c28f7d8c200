"""Compile the Triton GEMMs ahead of time for a Hopper GPU (sm_90a) on a machine without one, and
say what the compiler made of them.

The host launchers (:func:`linear.forward`, :func:`linear.backward`) run as usual on CPU tensors
of the real shapes, but every kernel launch is captured instead of run (Triton's ``run`` of the
JIT function or autotuner is replaced inside :func:`captured_launches`); each captured launch is
then specialized exactly as Triton's launcher would (same binder, same signature, constants and
divisibility attributes) and compiled with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``.
An autotuned launch compiles its first config. :func:`summarize` reads the TTGIR, the PTX and
``ptxas -v``:

* ``async_copies``: ``cp.async`` and TMA copies (global to shared) in the PTX, and the ``cp.async``
  among them that move 16, 8 and 4 bytes (``async_16B``, ``async_8B``, ``async_4B``);
* ``vector_loads``: ``ld.global`` of 16 (``v4``) and 8 (``v2``) bytes, and scalar ``ld.global``;
* ``stages``: buffers of the main loop's shared-memory ring (the leading size of the pipelined
  loop's ``ttg.local_alloc``; 1 when the loop is not pipelined);
* ``loop_async``: whether the main loop (the first innermost ``scf.for`` that holds a dot) issues
  ``ttg.async_copy_global_to_local`` or TMA copies itself, i.e. copies overlap the matrix math;
* ``wgmma``: ``wgmma.mma_async`` instructions; ``registers`` and ``spill_bytes`` from ``ptxas -v``.

:func:`variant_key` is the key of Triton's in-process compile cache for a launch, so the distinct
keys of the launches a training step makes are the variants a fresh process compiles for it;
:func:`block_launches` captures the launches of one supernet block's forward and backward (the
op calls of ``SuperBlock.forward`` under bf16 autocast: float32 residual stream, bfloat16
copies of the super-weights) without running anything.

Run without ``TRITON_INTERPRET=1`` (the interpreter replaces the JIT functions). As a script it
prints the table over the given widths::

    python -m focusformer_fast.ops.kernels.aot [--widths 216,240,756,840] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

TARGET = GPUTarget("cuda", 90, 32)  # an H100/H200: compute capability 9.0, 32 threads per warp
TOKENS_BATCH = 128 * 197  # rows of a training batch: 128 images of 197 tokens
# a width's super-width in the presets: embed dims of their family's largest, MLP widths of 4x that
SUPER_WIDTH = {192: 240, 216: 240, 240: 240, 756: 960, 840: 960, 672: 960, 864: 960, 960: 960}


@dataclasses.dataclass
class Launch:
    """One captured launch: the JIT function and the arguments Triton's launcher would bind."""

    name: str
    fn: JITFunction
    args: tuple
    kwargs: dict


H100_SMS = 132  # multiprocessors of an H100 / H200 SXM, which size the split weight-gradient grids


@contextlib.contextmanager
def captured_launches(sms: int = H100_SMS) -> Iterator[list[Launch]]:
    """Within the context, kernel launches are recorded (and not run) in the yielded list, and the
    launchers size their grids for a GPU of ``sms`` multiprocessors."""
    from focusformer_fast.ops.kernels import layernorm, linear

    launches: list[Launch] = []

    def jit_run(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self.__name__, self, args, kwargs))

    def tuner_run(self, *args, **kwargs):
        kwargs.pop("grid", None)
        fn = self.fn
        launches.append(Launch(fn.__name__, fn, args, {**kwargs, **self.configs[0].all_kwargs()}))

    saved = JITFunction.run, Autotuner.run, linear.num_sms, layernorm.num_sms
    JITFunction.run, Autotuner.run = jit_run, tuner_run
    linear.num_sms = layernorm.num_sms = lambda device: sms
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run, linear.num_sms, layernorm.num_sms = saved


def compile_launch(launch: Launch):
    """``triton.compile`` of ``launch`` for :data:`TARGET`, specialized as Triton's launcher does."""
    backend = make_backend(TARGET)
    kwargs = {k: v for k, v in launch.kwargs.items() if k not in ("grid", "warmup")}
    binder = create_function_from_signature(launch.fn.signature, launch.fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = launch.fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(launch.fn, signature, constexprs, attrs), target=TARGET,
                          options=options.__dict__)


def variant_key(launch: Launch) -> tuple:
    """Triton's compile-cache key of ``launch``: the kernel, its argument specialization (dtypes,
    divisibility, constants) and its launch options. Equal keys share one compiled variant."""
    backend = make_backend(TARGET)
    kwargs = {k: v for k, v in launch.kwargs.items() if k not in ("grid", "warmup")}
    binder = create_function_from_signature(launch.fn.signature, launch.fn.params, backend)
    _, specialization, options = binder(*launch.args, **kwargs)
    return f"{launch.fn.__module__}.{launch.name}", repr(specialization), repr(sorted(options.items()))


def block_launches(embed: int, heads: int, hidden: int, maxima: tuple[int, int, int], batch: int = 128,
                   tokens: int = 197, head_dim: int = 64) -> list[Launch]:
    """The Triton launches of one supernet block's forward and backward, captured, not run.

    ``maxima`` are the space's ``(E_max, H_max, M_max)``; activations are ``[batch * tokens, width]``,
    as ``SuperBlock.forward`` feeds the ops under bf16 autocast: the float32 residual stream ``x``,
    bfloat16 LayerNorm outputs, bfloat16 copies of the float32 super-weights and biases read as
    they are.
    """
    from focusformer_fast.ops.kernels import attention, layernorm, linear

    e_max, h_max, m_max = maxima
    m, inner, bf16, f32 = batch * tokens, heads * head_dim, torch.bfloat16, torch.float32
    x = torch.empty(m, embed)
    ln_w = torch.empty(e_max)
    qkv_w, qkv_b = torch.empty(3 * h_max * head_dim, e_max, dtype=bf16), torch.empty(3 * h_max * head_dim)
    proj_w, proj_b = torch.empty(e_max, h_max * head_dim, dtype=bf16), torch.empty(e_max)
    fc1_w, fc1_b = torch.empty(m_max, e_max, dtype=bf16), torch.empty(m_max)
    fc2_w, fc2_b = torch.empty(e_max, m_max, dtype=bf16), torch.empty(e_max)
    with captured_launches() as launches:
        y, mean, rstd = layernorm.forward(x, ln_w, ln_w, 1e-6, bf16)
        qkv, _ = linear.forward(y, qkv_w, qkv_b, inner, 3, False, None, bf16)
        a, lse = attention.forward(qkv.view(batch, tokens, -1), heads, head_dim, bf16)
        x2, _ = linear.forward(a.view(m, inner), proj_w, proj_b, embed, 1, False, x, bf16)
        h, preact = linear.forward(y, fc1_w, fc1_b, hidden, 1, True, None, bf16)
        out, _ = linear.forward(h, fc2_w, fc2_b, embed, 1, False, x2, bf16)
        grad = torch.empty_like(out)
        dh, _, _ = linear.backward(grad, h, fc2_w, fc2_b, torch.empty(0), embed, 1, False, True, True, bf16, f32)
        dy, _, _ = linear.backward(dh, y, fc1_w, fc1_b, preact, hidden, 1, True, True, True, bf16, f32)
        layernorm.backward(dy, x2, ln_w, mean, rstd)
        da, _, _ = linear.backward(grad, a.view(m, inner), proj_w, proj_b, torch.empty(0), embed, 1, False, True,
                                   True, bf16, f32)
        dqkv = attention.backward(da.view(batch, tokens, inner), qkv.view(batch, tokens, -1), a, lse, heads,
                                  head_dim, bf16)
        linear.backward(dqkv.view(m, -1), y, qkv_w, qkv_b, torch.empty(0), inner, 3, False, True, True, bf16, f32)
    return launches


GEMMS = {"linear._fwd_kernel": "fwd", "linear._dx_kernel": "dx", "linear._dw_kernel": "dw"}


def preset_variants(presets: list[str]) -> dict[tuple, tuple[Launch, list[str]]]:
    """Every distinct compiled variant the blocks of ``presets`` launch (:func:`block_launches` at
    batch 128 for each block shape ``(embed, heads, MLP width)``), with the shapes that use it."""
    from focusformer_fast.space import SearchSpace

    variants: dict[tuple, tuple[Launch, list[str]]] = {}
    for preset in presets:
        space = SearchSpace.preset(preset)
        maxima = (space.max_embed, space.max_heads, space.max_mlp_hidden)
        shapes = sorted({(e, h, int(e * r)) for e in space.embed_dims for h in space.num_heads
                         for r in space.mlp_ratios})
        for e, h, m in shapes:
            for launch in block_launches(e, h, m, maxima):
                key = variant_key(launch)
                variants.setdefault(key, (launch, []))[1].append(f"{preset}:e{e}-h{h}-m{m}")
    return variants


def _ptxas() -> str:
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return bundled if os.path.exists(bundled) else "ptxas"


def _loop_bodies(ttgir: str) -> list[str]:
    """The text of every ``scf.for`` body in ``ttgir`` (brace-matched)."""
    bodies = []
    for match in re.finditer(r"scf\.for\b", ttgir):
        start = re.compile(r"\{[ \t]*\n").search(ttgir, match.end()).start()
        depth = 0
        for i in range(start, len(ttgir)):
            depth += {"{": 1, "}": -1}.get(ttgir[i], 0)
            if depth == 0:
                bodies.append(ttgir[start:i])
                break
    return bodies


def summarize(kernel) -> dict:
    """What the compiler made of ``kernel`` (a ``triton.compile`` result); keys in the module docstring."""
    ptx, ttgir = kernel.asm["ptx"], kernel.asm["ttgir"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        arch = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE).group(1)
        report = subprocess.run([_ptxas(), "-v", f"-arch={arch}", path, "-o", os.path.join(tmp, "kernel.o")],
                                capture_output=True, text=True, check=True).stderr
    # the main loop: the first loop (in program order) that multiplies and holds no loop itself
    dot_loops = [body for body in _loop_bodies(ttgir)
                 if ("warp_group_dot" in body or "tt.dot" in body) and "scf.for" not in body]
    main = dot_loops[0] if dot_loops else ""
    rings = [int(n) for n in re.findall(r"ttg\.local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+)x\d+x\d+", ttgir)]
    sizes = [int(n, 0) for n in re.findall(r"cp\.async\.c[ag]\.shared\.global[.\w:]* \[[^\]]*\], \[[^\]]*\], (\w+)", ptx)]
    return {
        "async_copies": len(sizes) + len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
        **{f"async_{n}B": sizes.count(n) for n in (16, 8, 4)},
        "ld_v4": len(re.findall(r"ld\.global[.\w]*\.v4\.", ptx)),
        "ld_v2": len(re.findall(r"ld\.global[.\w]*\.v2\.", ptx)),
        "ld_scalar": len(re.findall(r"ld\.global(?![.\w]*\.v[24]\.)[.\w]*\s", ptx)),
        "stages": max(rings, default=1),
        "loop_async": bool(re.search(r"async_copy_global_to_local|async_tma_copy_global_to_local", main)),
        "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spill_bytes": sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)),
    }


def gemm_launches(width: int, dtype: torch.dtype, m: int = TOKENS_BATCH) -> dict[str, Launch]:
    """The forward, dX and dW launches of a biased linear with K = O = ``width`` (super-width
    :data:`SUPER_WIDTH`), ``m`` rows, operands in ``dtype`` (float32: TF32 dots)."""
    from focusformer_fast.ops.kernels import linear

    wide = SUPER_WIDTH.get(width, width)
    x = torch.empty(m, width, dtype=dtype)
    weight = torch.empty(wide, wide, dtype=dtype)
    bias = torch.empty(wide, dtype=dtype)
    grad = torch.empty(m, width, dtype=dtype)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with captured_launches() as launches:
            linear.forward(x, weight, bias, width, 1, False, None, dtype)
            linear.backward(grad, x, weight, bias, torch.empty(0, dtype=dtype), width, 1, False, True, True, dtype)
    finally:
        torch.set_float32_matmul_precision(precision)
    names = {"_fwd_kernel": "fwd", "_dx_kernel": "dx", "_dw_kernel": "dw"}
    return {names[launch.name]: launch for launch in launches if launch.name in names}


def table(widths: list[int], dtypes: list[torch.dtype]) -> list[dict]:
    """One row per kernel x width x dtype: the launch's block config and :func:`summarize`."""
    rows = []
    for dtype in dtypes:
        for width in widths:
            for kind, launch in gemm_launches(width, dtype).items():
                config = {k: launch.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
                          if k in launch.kwargs}
                rows.append({"kernel": kind, "width": width, "dtype": str(dtype).removeprefix("torch."),
                             "config": config, **summarize(compile_launch(launch))})
    return rows


def variant_table(presets: list[str]) -> list[dict]:
    """One row per distinct GEMM variant of the presets' blocks (bf16 autocast): what it compiles to.

    ``width`` names the variant: its epilogue (``gelu``, ``residual``), whether ``grad_out`` is
    float32 (``f32 grad``: the residual stream's gradient), the weight gradient's split mode, the
    A/B/C alignments in elements, and how many of the presets' block shapes launch it.
    """
    rows = []
    for (name, _, _), (launch, shapes) in preset_variants(presets).items():
        kind = GEMMS.get(".".join(name.rsplit(".", 2)[-2:]))
        if kind is None:
            continue
        kw = launch.kwargs
        tags = [tag for tag, on in (("gelu", kw.get("GELU")), ("residual", kw.get("HAS_RESIDUAL")),
                                    ("f32 grad", kind != "fwd" and launch.args[0].dtype == torch.float32)) if on]
        if kind == "dw":
            tags.append(("stored", "atomic", "partials")[kw["SPLIT_MODE"]])
        width = " ".join(tags + [f"A{kw['A_ALIGN']}/B{kw['B_ALIGN']}/C{kw['C_ALIGN']}", f"({len(set(shapes))} shapes)"])
        rows.append({"kernel": kind, "width": width, "dtype": "bfloat16", **summarize(compile_launch(launch))})
    return rows


def markdown(rows: list[dict]) -> str:
    """``rows`` of :func:`table` as a markdown table."""
    cols = ["kernel", "width", "dtype", "async_copies", "async_16B", "async_8B", "async_4B", "ld_v4", "ld_v2", "ld_scalar", "stages", "loop_async",
            "wgmma", "registers", "spill_bytes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(row[c]) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="216,240,756,840", help="comma-separated K = O widths")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated operand dtypes")
    parser.add_argument("--presets", help="instead: every GEMM variant the blocks of these presets launch "
                                              "(comma-separated; see variant_table)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles")
    if args.presets:
        rows = variant_table(args.presets.split(","))
    else:
        rows = table([int(w) for w in args.widths.split(",")], [getattr(torch, d) for d in args.dtypes.split(",")])
    text = markdown(rows)
    print(text, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
