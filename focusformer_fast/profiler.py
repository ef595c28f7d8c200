"""Hardware latency of subnets: measurement, a per-block lookup table, and its validation.

Three jobs, one chain (DESIGN.md, profile):

* **Measure** one subnet on the current device: the extracted dense model (``backend="dense"``,
  the deployment path) or the supernet with a fixed arch through the sliced ops on one ops
  backend; eagerly, or on a GPU replayed from a ``torch.cuda.CUDAGraph``. Timing is adaptive
  (:func:`measure`): warm-up, then rounds of repeats until the median's 95% confidence interval
  is narrow enough or a time cap is reached; CUDA events on a GPU, ``time.perf_counter`` on CPU.
* **Tabulate** (:func:`build_table`): for each batch size, every embed dim's stem (patch embed +
  CLS/pos) and head (final norm + classifier), and every distinct block shape
  ``(embed dim, heads, mlp ratio)``. All entries are *marginal* costs inside one forward, so
  they add up: ``stem[e] = T(stem)``, ``head[e] = T(stem -> head) - T(stem)``,
  ``block[e,h,r] = (T(stem -> k blocks -> head) - T(stem -> head)) / k``, where ``T`` is the
  latency of one call (one graph replay on a GPU; the median, or p10 on CPU) and the ``k``
  chained blocks have the same shape and distinct weights. The fixed cost of a call (a graph's
  start-up on the GPU, Python entry on CPU) lands in ``stem`` once, as it does in a whole
  subnet. :class:`LatencyModel` predicts
  ``stem + sum(blocks) + head`` and is the sampler's ``cost(arch) -> float`` (milliseconds).
* **Validate** (:func:`validate`): measure seeded random subnets whole and compare the table's
  prediction, and FLOPs, with the measured latency (MAPE, max error, Spearman, Kendall).

Tables are JSON with a format version, written atomically, keyed by device, driver, torch and
CUDA versions, dtype, backend and batch sizes; loading one made elsewhere warns (or, with
``strict=True``, raises) naming every field that differs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import re
import statistics
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import scipy.stats
import torch
from torch import Tensor

from . import __version__, ops
from .atomic_files import write_json_atomic
from .export import StandaloneViT, ViTConfig
from .space import Arch, SearchSpace
from .supernet import LN_EPS, Supernet

FORMAT_VERSION = 1
TABLE_KIND = "focusformer_fast.latency_table"
DENSE = "dense"
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ENV_FIELDS = ("device_type", "device_name", "driver", "torch", "cuda")
STATISTICS = ("median", "p10")
_CPU_FLUSH_BYTES = 64 << 20
# GPU time the CPU gets, per queued graph replay, to enqueue a round ahead of the GPU (seconds).
_QUEUE_AHEAD_S_PER_REP = 50e-6
_SLEEP_CYCLES_PER_S = 2e9
# Reps per timed round at most: keeps a round's queued launches well inside the CUDA launch queue.
_MAX_ROUND = 200

BlockShape = tuple[int, int, float]


class LatencyTableWarning(UserWarning):
    """A latency table was made on another device or software version than this one."""


# -- device records -------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (the current CUDA GPU if any, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device={name!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but no CUDA GPU is visible to torch {torch.__version__}")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_record() -> dict[str, Any]:
    """What CPU latency depends on: model, cores visible to this process, torch threads."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "type": "cpu",
        "name": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _throttle_reasons(pynvml: Any, mask: int) -> list[str]:
    prefix = "nvmlClocksThrottleReason"
    skip = {"All", "None", "UserDefinedClocks"}
    bits = {n[len(prefix):]: getattr(pynvml, n) for n in dir(pynvml) if n.startswith(prefix)}
    return sorted(name for name, bit in bits.items() if name not in skip and isinstance(bit, int) and mask & bit)


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """The NVML handle of torch's CUDA device ``index``, matched by PCI address when torch knows it."""
    props = torch.cuda.get_device_properties(index)
    want = tuple(getattr(props, a, None) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
    if None not in want:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            pci = pynvml.nvmlDeviceGetPciInfo(handle)
            if (pci.domain, pci.bus, pci.device) == want:
                return handle
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def nvml_record(index: int) -> tuple[dict[str, Any] | None, str]:
    """NVML facts of CUDA device ``index``, or ``(None, reason)`` when NVML cannot answer.

    Fields: name, driver, memory_total_mib, sm/memory clocks (current and max, MHz),
    power_limit_w, temperature_c, throttle_reasons (names of the active clock-event bits).
    """
    try:
        import pynvml
    except ImportError as exc:
        return None, f"pynvml is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable: {exc}"
    try:
        h = _nvml_handle(pynvml, index)
        return _nvml_fields(pynvml, h), ""
    except pynvml.NVMLError as exc:
        return None, f"NVML could not open CUDA device {index}: {exc}"
    finally:
        pynvml.nvmlShutdown()


def _nvml_fields(pynvml: Any, h: Any) -> dict[str, Any]:
    """Each field of :func:`nvml_record`, ``None`` where this GPU or driver does not support it."""

    def ask(query: Callable[[], Any]) -> Any:
        try:
            return query()
        except pynvml.NVMLError:
            return None

    clock, max_clock = pynvml.nvmlDeviceGetClockInfo, pynvml.nvmlDeviceGetMaxClockInfo
    power_mw = ask(lambda: pynvml.nvmlDeviceGetPowerManagementLimit(h))
    throttle = ask(lambda: pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h))
    return {
        "name": _text(pynvml.nvmlDeviceGetName(h)),
        "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
        "memory_total_mib": ask(lambda: pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20),
        "sm_clock_mhz": ask(lambda: clock(h, pynvml.NVML_CLOCK_SM)),
        "sm_clock_max_mhz": ask(lambda: max_clock(h, pynvml.NVML_CLOCK_SM)),
        "memory_clock_mhz": ask(lambda: clock(h, pynvml.NVML_CLOCK_MEM)),
        "memory_clock_max_mhz": ask(lambda: max_clock(h, pynvml.NVML_CLOCK_MEM)),
        "power_limit_w": None if power_mw is None else power_mw / 1000.0,
        "temperature_c": ask(lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
        "throttle_reasons": None if throttle is None else _throttle_reasons(pynvml, throttle),
    }


def gpu_record(index: int) -> dict[str, Any]:
    """torch's view of CUDA device ``index`` plus its NVML record (or the reason there is none)."""
    props = torch.cuda.get_device_properties(index)
    record: dict[str, Any] = {
        "type": "cuda",
        "index": index,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_total_mib": props.total_memory // 2**20,
        "l2_cache_bytes": getattr(props, "L2_cache_size", None),
    }
    nvml, reason = nvml_record(index)
    record["nvml"] = nvml if nvml is not None else {"error": reason}
    return record


def device_record(device: torch.device) -> dict[str, Any]:
    """The record written with every table: :func:`gpu_record` on CUDA, :func:`cpu_record` on CPU."""
    return gpu_record(device.index or 0) if device.type == "cuda" else cpu_record()


def environment(device_type: str, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields a table is keyed by (:data:`ENV_FIELDS`) as found in this process.

    ``record`` (a :func:`device_record`) is reused when given; otherwise the current CUDA device's
    name is read from torch and the driver from NVML (``None`` when NVML is absent).
    """
    if device_type == "cpu":
        name, driver, cuda = (record or {}).get("name") or cpu_model(), None, None
    elif record is not None:
        name, driver, cuda = record["name"], record["nvml"].get("driver"), torch.version.cuda
    elif torch.cuda.is_available():
        nvml, _ = nvml_record(torch.cuda.current_device())
        name = torch.cuda.get_device_name(torch.cuda.current_device())
        driver, cuda = (nvml or {}).get("driver"), torch.version.cuda
    else:
        name, driver, cuda = "no CUDA GPU", None, torch.version.cuda
    return {"device_type": device_type, "device_name": name, "driver": driver,
            "torch": torch.__version__, "cuda": cuda}


def environment_differences(table_env: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """``"field: table X, here Y"`` for every differing field; an unknown driver here is not compared."""
    diffs = []
    for name in ENV_FIELDS:
        if name == "driver" and here.get(name) is None:
            continue
        if table_env.get(name) != here.get(name):
            diffs.append(f"{name}: table {table_env.get(name)!r}, here {here.get(name)!r}")
    return diffs


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (for file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(record: dict[str, Any]) -> str:
    """File-name label of a device record: the GPU name, or ``cpu-<model>``."""
    return slug(record["name"]) if record["type"] == "cuda" else "cpu-" + slug(record["name"])


# -- timing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimingConfig:
    """How long and how often to repeat one measurement.

    Attributes:
        warmup: untimed calls first (after any graph capture).
        min_reps: timed calls before the confidence interval may stop the loop.
        max_reps: timed calls at most.
        max_time_s: wall-clock cap of the timed loop in seconds (at least 3 reps are taken).
        rel_ci: stop once the 95% CI of the median, as a fraction of the median, is this narrow.
        flush_l2: overwrite a buffer of twice the L2 size (64 MiB on CPU) before each rep.
        statistic: what a table entry is made of, ``median`` or ``p10`` (steadier on a busy CPU,
            where contention only ever adds time).
    """

    warmup: int = 10
    min_reps: int = 30
    max_reps: int = 2000
    max_time_s: float = 0.3
    rel_ci: float = 0.0025
    flush_l2: bool = False
    statistic: str = "median"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"TimingConfig.statistic={self.statistic!r} is not allowed; "
                             f"allowed: {', '.join(STATISTICS)}")
        for name in ("warmup", "min_reps", "max_reps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "warmup" else 1):
                raise ValueError(f"TimingConfig.{name}={v!r} must be an int >= {0 if name == 'warmup' else 1}")
        if self.min_reps > self.max_reps:
            raise ValueError(f"TimingConfig.min_reps={self.min_reps} must be <= max_reps={self.max_reps}")
        if not self.max_time_s > 0 or not self.rel_ci > 0:
            raise ValueError(
                f"TimingConfig.max_time_s={self.max_time_s} and rel_ci={self.rel_ci} must be > 0"
            )

    @classmethod
    def for_device(cls, device: torch.device, **overrides: Any) -> "TimingConfig":
        """Defaults for ``device``: tight medians on GPU (stable graph replays); on CPU, looser and
        summarized by p10, since other processes only ever add time to a CPU measurement."""
        if device.type == "cuda":
            base = cls()
        else:
            base = cls(warmup=3, min_reps=10, max_reps=500, max_time_s=0.25, rel_ci=0.02, statistic="p10")
        return dataclasses.replace(base, **overrides)


@dataclass(frozen=True)
class Timing:
    """Summary of one measurement, in milliseconds per call."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    reps: int
    ci_rel: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "Timing":
        s = sorted(samples_ms)
        deciles = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
        return cls(statistics.median(s), deciles[0], deciles[8], len(s), median_ci_rel(s))

    def stat(self, name: str) -> float:
        """The summary named ``name`` (one of :data:`STATISTICS`) in milliseconds."""
        return getattr(self, f"{name}_ms")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def median_ci_rel(samples: Sequence[float]) -> float:
    """Half-width of the distribution-free 95% CI of the median, relative to the median.

    Uses the order statistics at ranks ``n/2 -+ 1.96*sqrt(n)/2``; ``inf`` for fewer than 6 samples.
    """
    n = len(samples)
    if n < 6:
        return math.inf
    s = sorted(samples)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    med = statistics.median(s)
    return (s[hi] - s[lo]) / (2 * med) if med > 0 else math.inf


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _l2_flusher(device: torch.device) -> Callable[[], Any]:
    if device.type == "cuda":
        nbytes = 2 * (getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20)
    else:
        nbytes = _CPU_FLUSH_BYTES
    buf = torch.empty(nbytes // 4, dtype=torch.int32, device=device)
    return buf.zero_


def _timed_round(fn: Callable[[], Any], device: torch.device, n: int,
                 flush: Callable[[], Any] | None) -> list[float]:
    """``n`` timed calls of ``fn`` in milliseconds: CUDA events on a GPU, ``perf_counter`` on CPU.

    Graph replays are queued behind a GPU sleep, so the GPU runs them back to back and the CPU's
    launch time never shows between them: their GPU times are what add up inside one graph.
    Eager calls are timed as launched, since launch overhead is part of eager latency.
    """
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        if isinstance(fn, GraphRunner):
            torch.cuda._sleep(int(n * _QUEUE_AHEAD_S_PER_REP * _SLEEP_CYCLES_PER_S))
        for start, end in events:
            if flush is not None:
                flush()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    out = []
    for _ in range(n):
        if flush is not None:
            flush()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _stop(samples: list[float], elapsed_s: float, config: TimingConfig) -> bool:
    n = len(samples)
    if n >= config.max_reps:
        return True
    if elapsed_s >= config.max_time_s and n >= min(3, config.max_reps):
        return True
    return n >= config.min_reps and median_ci_rel(samples) <= config.rel_ci


def measure(fn: Callable[[], Any], device: torch.device, config: TimingConfig) -> Timing:
    """Latency of one call of ``fn`` on ``device``, repeated adaptively (see :class:`TimingConfig`).

    ``fn`` runs under ``torch.inference_mode``; rounds are sized so the loop keeps near
    ``max_time_s`` even when one call is slow.
    """
    flush = _l2_flusher(device) if config.flush_l2 else None
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(max(config.warmup, 1)):
            fn()
        _sync(device)
        per_call = (time.perf_counter() - t0) / max(config.warmup, 1)
        samples: list[float] = []
        start = time.perf_counter()
        while not _stop(samples, time.perf_counter() - start, config):
            left = config.max_time_s - (time.perf_counter() - start)
            want = config.min_reps - len(samples) if len(samples) < config.min_reps else max(5, len(samples) // 2)
            fits = int(left / per_call) if per_call > 0 else want
            n = max(1, min(want, fits, _MAX_ROUND, config.max_reps - len(samples)))
            samples += _timed_round(fn, device, n, flush)
    return Timing.from_samples(samples)


class GraphRunner:
    """``fn`` captured once into a CUDA graph; calling the runner replays it.

    ``fn`` must read only tensors allocated before capture (static inputs). The output of the
    captured call is kept so its memory stays owned by the graph.
    """

    def __init__(self, fn: Callable[[], Any], device: torch.device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.output = fn()
        torch.cuda.synchronize(device)

    def __call__(self) -> None:
        self.graph.replay()


def make_runner(fn: Callable[[], Any], device: torch.device, graph: bool) -> Callable[[], Any]:
    """``fn`` itself (eager), or a :class:`GraphRunner` replaying it (``graph=True``, CUDA only)."""
    if not graph:
        return fn
    if device.type != "cuda":
        raise ValueError(f"graph=True needs a CUDA device; device={device} (use graph=False on CPU)")
    return GraphRunner(fn, device)


# -- what is timed ----------------------------------------------------------------------------


def check_backend(backend: str, device_type: str) -> str:
    """``backend`` if it can run on ``device_type``: ``dense``, ``auto`` or an available ops backend."""
    allowed = [DENSE, "auto", *ops.available_backends(device_type)]
    if backend not in allowed:
        raise ValueError(f"backend={backend!r} cannot run on {device_type}; allowed here: {', '.join(allowed)}")
    return backend


def timed_backends(device_type: str) -> list[str]:
    """The ops backends worth timing on ``device_type``: the available ones, except Triton on CPU
    (there it runs under ``TRITON_INTERPRET=1``, an emulator whose latency means nothing)."""
    return [b for b in ops.available_backends(device_type) if not (device_type == "cpu" and b == "triton")]


def check_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def random_images(space: SearchSpace, batch_size: int, device: torch.device, dtype: torch.dtype,
                  seed: int = 0) -> Tensor:
    """Seeded images ``[batch_size, in_chans, image_size, image_size]`` on ``device`` in ``dtype``."""
    shape = (batch_size, space.in_chans, space.image_size, space.image_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


def make_supernet(space: SearchSpace, device: torch.device, dtype: torch.dtype) -> Supernet:
    """An inference-mode supernet of ``space`` on ``device`` in ``dtype`` (weights are random)."""
    return Supernet(space).to(device=device, dtype=dtype).eval()


def subnet_forward(net: Supernet, arch: Arch, backend: str) -> Callable[[Tensor], Tensor]:
    """Forward of subnet ``arch``: images ``[B, C, H, W]`` -> logits ``[B, classes]``.

    ``backend="dense"``: the extracted standalone model (contiguous weights, plain modules).
    Otherwise: the supernet with ``arch`` fixed, its sliced ops on ``backend``.
    """
    check_backend(backend, net.head_weight.device.type)
    if backend == DENSE:
        return net.extract(arch).eval()

    def forward(images: Tensor) -> Tensor:
        with ops.set_backend(backend):
            return net(images, arch)

    return forward


def time_forward(forward: Callable[[Tensor], Tensor], images: Tensor, *, graph: bool = False,
                 timing: TimingConfig | None = None) -> Timing:
    """Latency of ``forward(images)`` on ``images``' device, eager or replayed from a CUDA graph."""
    device = images.device
    runner = make_runner(lambda: forward(images), device, graph)
    return measure(runner, device, timing or TimingConfig.for_device(device))


def measure_subnet(net: Supernet, arch: Arch, *, batch_size: int, backend: str = DENSE, graph: bool = False,
                   timing: TimingConfig | None = None, seed: int = 0) -> Timing:
    """Latency of ``arch`` (whole subnet) at ``batch_size`` on ``net``'s device and dtype."""
    images = random_images(net.space, batch_size, net.head_weight.device, net.head_weight.dtype, seed)
    return time_forward(subnet_forward(net, arch, backend), images, graph=graph, timing=timing)


@dataclass
class _Pieces:
    """A ViT of ``k`` blocks of one shape, cut where the table cuts it.

    ``stem``: images ``[B, C, H, W]`` -> tokens ``[B, N, e]``; ``forward``: images -> logits
    ``[B, classes]`` through stem, the ``k`` blocks and the head.
    """

    stem: Callable[[Tensor], Tensor]
    forward: Callable[[Tensor], Tensor]


def _dense_pieces(space: SearchSpace, shape: BlockShape, k: int, device: torch.device,
                  dtype: torch.dtype) -> _Pieces:
    e, h, r = shape
    arch = Arch(e, k, (h,) * k, (r,) * k)
    cfg = ViTConfig(arch, space.image_size, space.patch_size, space.in_chans, space.num_classes,
                    space.head_dim, "cls", LN_EPS)
    model = StandaloneViT(cfg).to(device=device, dtype=dtype).eval()

    return _Pieces(model.embed, model)


def _sliced_pieces(net: Supernet, shape: BlockShape, k: int, backend: str) -> _Pieces:
    e, h, r = shape
    hidden = int(e * r)

    def stem(images: Tensor) -> Tensor:
        with ops.set_backend(backend):
            return net.embed(images, e)

    def forward(images: Tensor) -> Tensor:
        with ops.set_backend(backend):
            x = net.embed(images, e)
            for i in range(k):
                x = net.blocks[i](x, h, hidden)
            return net.forward_head(x)

    return _Pieces(stem, forward)


# -- the table ------------------------------------------------------------------------------


def block_key(shape: BlockShape) -> str:
    """JSON key of a block shape: ``(192, 3, 3.5)`` -> ``"e192-h3-r3.5"``."""
    e, h, r = shape
    return f"e{e}-h{h}-r{float(r)!r}"


def parse_block_key(key: str) -> BlockShape:
    """Inverse of :func:`block_key`; ``ValueError`` for anything else."""
    m = re.fullmatch(r"e(\d+)-h(\d+)-r([0-9.]+)", key)
    if m is None:
        raise ValueError(f"block key {key!r} is not of the form 'e<embed>-h<heads>-r<ratio>'")
    return int(m[1]), int(m[2]), float(m[3])


def block_shapes(space: SearchSpace) -> list[BlockShape]:
    """Every distinct block shape of ``space``: embed dims x heads x mlp ratios."""
    return [(e, h, r) for e in space.embed_dims for h in space.num_heads for r in space.mlp_ratios]


@dataclass
class BatchTable:
    """Marginal latencies (ms) at one batch size: ``stem[e]``, ``head[e]``, ``blocks[(e, h, r)]``.

    ``raw`` holds the measurements they were derived from (:meth:`Timing.to_dict` per key).
    """

    stem: dict[int, float]
    head: dict[int, float]
    blocks: dict[BlockShape, float]
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stem": {str(e): v for e, v in self.stem.items()},
            "head": {str(e): v for e, v in self.head.items()},
            "blocks": {block_key(s): v for s, v in self.blocks.items()},
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchTable":
        return cls(
            {int(e): float(v) for e, v in d["stem"].items()},
            {int(e): float(v) for e, v in d["head"].items()},
            {parse_block_key(k): float(v) for k, v in d["blocks"].items()},
            dict(d.get("raw", {})),
        )


@dataclass
class LatencyTable:
    """A per-block latency lookup table of one search space on one device.

    Attributes:
        space: the search space the table covers.
        env: what the table is keyed by (:data:`ENV_FIELDS`).
        dtype, backend, graph: how the pieces were run (``graph``: CUDA-graph replays).
        batches: batch size -> :class:`BatchTable`.
        device: the full device record (:func:`device_record`) at build time.
        timing: the :class:`TimingConfig` used, as a dict.
        chain: blocks per chained measurement (``k`` in the module docstring).
        created: ISO time of the build; build_seconds: its wall time.
        validation: the last :func:`validate` report, if any.
    """

    space: SearchSpace
    env: dict[str, Any]
    dtype: str
    backend: str
    graph: bool
    batches: dict[int, BatchTable]
    device: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    chain: int = 4
    created: str = ""
    build_seconds: float = 0.0
    validation: dict[str, Any] | None = None

    def key(self) -> dict[str, Any]:
        return {**self.env, "dtype": self.dtype, "backend": self.backend, "graph": self.graph,
                "batch_sizes": sorted(self.batches)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": TABLE_KIND,
            "units": "ms",
            "key": self.key(),
            "focusformer_fast": __version__,
            "device": self.device,
            "space": self.space.to_dict(),
            "timing": self.timing,
            "chain": self.chain,
            "created": self.created,
            "build_seconds": self.build_seconds,
            "batches": {str(b): t.to_dict() for b, t in sorted(self.batches.items())},
            "validation": self.validation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyTable":
        """Parse :meth:`to_dict` output; ``ValueError`` names the first problem."""
        if not isinstance(d, dict) or d.get("kind") != TABLE_KIND:
            raise ValueError(f"not a latency table (kind={d.get('kind') if isinstance(d, dict) else None!r}, "
                             f"expected {TABLE_KIND!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version={d.get('format_version')!r}; this version reads {FORMAT_VERSION}")
        try:
            key = d["key"]
            return cls(
                space=SearchSpace.from_dict(d["space"]),
                env={name: key[name] for name in ENV_FIELDS},
                dtype=key["dtype"],
                backend=key["backend"],
                graph=bool(key["graph"]),
                batches={int(b): BatchTable.from_dict(t) for b, t in d["batches"].items()},
                device=d.get("device", {}),
                timing=d.get("timing", {}),
                chain=int(d.get("chain", 4)),
                created=d.get("created", ""),
                build_seconds=float(d.get("build_seconds", 0.0)),
                validation=d.get("validation"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"missing or malformed field {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON atomically (see :func:`write_json_atomic`)."""
        return write_json_atomic(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike, *, strict: bool = False) -> "LatencyTable":
        """Read a table; warn (``strict=False``) or raise (``strict=True``) if it was made elsewhere.

        Raises ``ValueError`` for a missing, corrupt or wrong-version file.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"latency table {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"latency table {str(path)!r} is unreadable or corrupt: {exc}") from None
        try:
            table = cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"latency table {str(path)!r} is corrupt or incompatible: {exc}") from None
        table.check_environment(str(path), strict=strict)
        return table

    def check_environment(self, label: str = "(in memory)", *, strict: bool = False) -> list[str]:
        """Compare the table's key with this process; warn or raise naming what differs."""
        diffs = environment_differences(self.env, environment(self.env["device_type"]))
        if diffs:
            msg = (f"latency table {label!r} was made on another device or version ({'; '.join(diffs)}); "
                   "its latencies may not hold here")
            if strict:
                raise ValueError(f"{msg}; refused (strict)")
            warnings.warn(msg, LatencyTableWarning, stacklevel=3)
        return diffs


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="shape", disable=None if enabled else True, leave=False)


def _build_batch(space: SearchSpace, batch_size: int, *, net: Supernet | None, backend: str, graph: bool,
                 device: torch.device, dtype: torch.dtype, timing: TimingConfig, chain: int,
                 bar: Any) -> BatchTable:
    images = random_images(space, batch_size, device, dtype)

    def pieces(shape: BlockShape, k: int) -> _Pieces:
        if net is None:
            return _dense_pieces(space, shape, k, device, dtype)
        return _sliced_pieces(net, shape, k, backend)

    def run(label: str, shape: BlockShape, k: int, stem_only: bool) -> float:
        p = pieces(shape, k)
        t = time_forward(p.stem if stem_only else p.forward, images, graph=graph, timing=timing)
        raw[label] = t.to_dict()
        bar.update(1)
        return t.stat(timing.statistic)

    raw: dict[str, dict[str, Any]] = {}
    stem, head, blocks = {}, {}, {}
    for e in space.embed_dims:
        base = (e, space.num_heads[0], space.mlp_ratios[0])
        stem[e] = run(f"stem/e{e}", base, 0, True)
        stem_head = run(f"stem+head/e{e}", base, 0, False)
        head[e] = stem_head - stem[e]
        for shape in block_shapes(space):
            if shape[0] == e:
                full = run(f"stem+{chain}x{block_key(shape)}+head", shape, chain, False)
                blocks[shape] = (full - stem_head) / chain
    return BatchTable(stem, head, blocks, raw)


def build_table(space: SearchSpace, batch_sizes: Iterable[int], *, device: torch.device | str = "auto",
                dtype: str = "fp32", backend: str = DENSE, graph: bool | None = None,
                timing: TimingConfig | None = None, chain: int = 4, progress: bool = True) -> LatencyTable:
    """Measure every stem, head and block shape of ``space`` at each batch size.

    Args:
        space: the search space.
        batch_sizes: positive ints.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a ``torch.device``.
        dtype: ``fp32``, ``bf16`` or ``fp16``; weights and inputs are cast to it.
        backend: ``dense`` (standalone modules) or an ops backend / ``auto`` (sliced supernet).
        graph: replay CUDA graphs (default: on for CUDA, off for CPU).
        timing: repetition policy (default :meth:`TimingConfig.for_device`).
        chain: blocks chained per block-shape measurement, ``1 <= chain <= space.max_depth``.
        progress: show a tqdm bar (on a terminal).

    Returns:
        the :class:`LatencyTable` (not saved; see :meth:`LatencyTable.save`).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    torch_dtype = check_dtype(dtype)
    check_backend(backend, device.type)
    graph = device.type == "cuda" if graph is None else graph
    if graph and device.type != "cuda":
        raise ValueError(f"graph=True needs a CUDA device; device={device} (use graph=False on CPU)")
    sizes = check_batch_sizes(batch_sizes)
    if not 1 <= chain <= space.max_depth:
        raise ValueError(f"chain={chain} must be in [1, {space.max_depth}] (the space's max depth)")
    timing = timing or TimingConfig.for_device(device)
    net = None if backend == DENSE else make_supernet(space, device, torch_dtype)
    record = device_record(device)
    per_batch = 2 * len(space.embed_dims) + len(block_shapes(space))
    t0 = time.perf_counter()
    batches = {}
    with _progress(per_batch * len(sizes), f"latency table {space.name}", progress) as bar:
        for b in sizes:
            batches[b] = _build_batch(space, b, net=net, backend=backend, graph=graph, device=device,
                                      dtype=torch_dtype, timing=timing, chain=chain, bar=bar)
    return LatencyTable(
        space=space, env=environment(device.type, record), dtype=dtype, backend=backend, graph=graph,
        batches=batches, device=record, timing=dataclasses.asdict(timing), chain=chain,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=time.perf_counter() - t0,
    )


def check_batch_sizes(batch_sizes: Iterable[int]) -> list[int]:
    """Sorted distinct positive ints, else ``ValueError`` naming the bad value."""
    sizes = list(batch_sizes)
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch size {b!r} is not allowed; batch sizes must be positive ints")
    if not sizes or len(set(sizes)) != len(sizes):
        raise ValueError(f"batch_sizes={sizes!r} must be a non-empty list of distinct positive ints")
    return sorted(sizes)


# -- the predictor ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyBreakdown:
    """Predicted latency of one subnet, in milliseconds: stem, each block in order, head."""

    stem_ms: float
    blocks_ms: tuple[float, ...]
    head_ms: float

    @property
    def total_ms(self) -> float:
        return self.stem_ms + sum(self.blocks_ms) + self.head_ms


def _snap(value: float, allowed: Sequence[float]) -> float:
    return next(a for a in allowed if math.isclose(value, a))


class LatencyModel:
    """Latency predictor from a :class:`LatencyTable` at one batch size: stem + blocks + head.

    Implements the sampler's cost interface: ``cost(arch) -> float`` in milliseconds.

    Args:
        table: the lookup table.
        batch_size: which of the table's batch sizes to predict for (default: the smallest).
    """

    def __init__(self, table: LatencyTable, batch_size: int | None = None):
        sizes = sorted(table.batches)
        batch_size = sizes[0] if batch_size is None else batch_size
        if batch_size not in table.batches:
            raise ValueError(f"batch_size={batch_size!r} is not in the latency table; it has: {sizes}")
        self.table = table
        self.space = table.space
        self.batch_size = batch_size
        self._entries = table.batches[batch_size]

    @classmethod
    def load(cls, path: str | os.PathLike, batch_size: int | None = None, *, strict: bool = False) -> "LatencyModel":
        """Load a table file (see :meth:`LatencyTable.load`) and predict at ``batch_size``."""
        return cls(LatencyTable.load(path, strict=strict), batch_size)

    def breakdown(self, arch: Arch) -> LatencyBreakdown:
        """Per-piece prediction for ``arch``; ``ValueError`` if it is outside the table's space."""
        self.space.validate(arch)
        e, t = arch.embed_dim, self._entries
        blocks = []
        for h, r in zip(arch.num_heads, arch.mlp_ratio):
            shape = (e, h, _snap(r, self.space.mlp_ratios))
            if shape not in t.blocks:
                raise ValueError(f"block shape {block_key(shape)} is not in the latency table "
                                 f"(batch {self.batch_size}); it has {len(t.blocks)} shapes")
            blocks.append(t.blocks[shape])
        if e not in t.stem or e not in t.head:
            raise ValueError(f"embed_dim={e} has no stem/head entry in the latency table; it has {sorted(t.stem)}")
        return LatencyBreakdown(t.stem[e], tuple(blocks), t.head[e])

    def cost(self, arch: Arch) -> float:
        """Predicted latency of ``arch`` in milliseconds per forward of ``batch_size`` images."""
        return self.breakdown(arch).total_ms

    __call__ = cost

    def __repr__(self) -> str:
        env = self.table.env
        return (f"LatencyModel(space={self.space.name!r}, device={env['device_name']!r}, dtype={self.table.dtype}, "
                f"backend={self.table.backend}, graph={self.table.graph}, batch_size={self.batch_size})")


# -- validation -----------------------------------------------------------------------------


def predictor_stats(predicted: Sequence[float], measured: Sequence[float],
                    ranked_by: Sequence[float] | None = None) -> dict[str, float]:
    """MAPE and max absolute percentage error of ``predicted`` vs ``measured`` (fractions), and
    Spearman/Kendall of ``ranked_by`` (default ``predicted``) with ``measured``."""
    ape = [abs(p - m) / m for p, m in zip(predicted, measured)]
    ranked = predicted if ranked_by is None else ranked_by
    return {"mape": statistics.fmean(ape), "max_ape": max(ape),
            "spearman": float(scipy.stats.spearmanr(ranked, measured).statistic),
            "kendall": float(scipy.stats.kendalltau(ranked, measured).statistic)}


def validation_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """``n`` random archs drawn with ``random.Random(seed)`` (the same list on every machine)."""
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def validate(table: LatencyTable, n: int, *, seed: int = 1, device: torch.device | str = "auto",
             timing: TimingConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure ``n`` seeded random subnets whole and score the table's prediction and FLOPs.

    Subnets run the way the table's pieces ran (its dtype, backend and graph setting) and are
    summarized by the table's statistic (median unless the table was built with ``p10``).
    Returns ``{"n", "seed", "batches": {batch: {"lut": stats, "flops": stats, "flops_fit",
    "measured_ms", "rows"}}}`` where stats are :func:`predictor_stats` (FLOPs: MAPE of the best
    linear fit, ranks of raw FLOPs).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"validate n={n!r} must be an int >= 2 (rank correlations need two subnets)")
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type != table.env["device_type"]:
        raise ValueError(f"the table was built on {table.env['device_type']}; "
                         f"it cannot be validated on {device.type}")
    timing = timing or TimingConfig.for_device(device)
    space, archs = table.space, validation_archs(table.space, n, seed)
    dtype = DTYPES[table.dtype]
    net = make_supernet(space, device, dtype)
    sizes = sorted(table.batches)
    images = {b: random_images(space, b, device, dtype) for b in sizes}
    measured: dict[int, list[Timing]] = {b: [] for b in sizes}
    with _progress(n * len(sizes), f"validate {space.name}", progress) as bar:
        for arch in archs:
            forward = subnet_forward(net, arch, table.backend)
            for b in sizes:
                measured[b].append(time_forward(forward, images[b], graph=table.graph, timing=timing))
                bar.update(1)
    flops = [float(space.flops(a)) for a in archs]
    stat = table.timing.get("statistic", "median")
    batches = {str(b): _batch_report(LatencyModel(table, b), archs, flops, [t.stat(stat) for t in measured[b]],
                                     measured[b]) for b in sizes}
    return {"n": n, "seed": seed, "device": table.env["device_name"], "batches": batches}


def _batch_report(model: LatencyModel, archs: list[Arch], flops: list[float], meas: list[float],
                  measured: list[Timing]) -> dict[str, Any]:
    pred = [model.cost(a) for a in archs]
    a, b = (float(v) for v in np.polyfit(flops, meas, 1))
    rows = [{"arch": arch.to_dict(), "flops": int(f), "predicted_ms": p, **t.to_dict()}
            for arch, f, p, t in zip(archs, flops, pred, measured)]
    return {
        "lut": predictor_stats(pred, meas),
        "flops": predictor_stats([a * f + b for f in flops], meas, ranked_by=flops),
        "flops_fit": {"ms_per_flop": a, "intercept_ms": b},
        "measured_ms": {"min": min(meas), "median": statistics.median(meas), "max": max(meas)},
        "rows": rows,
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One human-readable line per batch size of a :func:`validate` report."""
    lines = []
    for b, r in report["batches"].items():
        lut, fl, m = r["lut"], r["flops"], r["measured_ms"]
        lines.append(
            f"batch {b}: table MAPE {lut['mape']:.2%} max {lut['max_ape']:.2%} "
            f"Spearman {lut['spearman']:.3f} Kendall {lut['kendall']:.3f} | "
            f"FLOPs MAPE {fl['mape']:.2%} max {fl['max_ape']:.2%} Spearman {fl['spearman']:.3f} "
            f"Kendall {fl['kendall']:.3f} | measured {m['min']:.3f}-{m['max']:.3f} ms "
            f"(median {m['median']:.3f}) over {report['n']} subnets"
        )
    return lines
