"""Timing one call adaptively: warm-up, then rounds of repeats until the median is steady.

CUDA events on a GPU (graph replays queued behind a GPU sleep, so launch gaps never show
between them), ``time.perf_counter`` on CPU. A round stops when the median's 95% confidence
interval is narrow enough or a time cap is reached (:class:`TimingConfig`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

STATISTICS = ("median", "p10")

_CPU_FLUSH_BYTES = 64 << 20

# GPU time the CPU gets, per queued graph replay, to enqueue a round ahead of the GPU (seconds).
_QUEUE_AHEAD_S_PER_REP = 50e-6

_SLEEP_CYCLES_PER_S = 2e9

# Reps per timed round at most: keeps a round's queued launches well inside the CUDA launch queue.
_MAX_ROUND = 200


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

