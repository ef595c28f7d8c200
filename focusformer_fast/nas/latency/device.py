"""What a latency depends on: the device record written with every table, and table keys.

A CUDA device is described by torch (name, capability, SMs, memory, L2) and NVML (driver,
clocks, power limit, temperature, throttle reasons; absent when NVML is not installed or
cannot answer); a CPU by its model, usable cores and torch threads. :func:`environment` is
the part a table is keyed by (:data:`ENV_FIELDS`).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any, Callable

import torch

ENV_FIELDS = ("device_type", "device_name", "driver", "torch", "cuda")


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

