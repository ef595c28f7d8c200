"""Device records (``nas.latency.device``): the CPU's, a one-line reason when NVML is absent; on a GPU the
NVML fields, or a record built without them."""

from __future__ import annotations

import pytest
import torch

from _latency_tables import CPU
from focusformer_fast.nas.latency.device import device_record, device_slug, environment, nvml_record

pytestmark = pytest.mark.usefixtures("one_thread")


def _nvml_missing(monkeypatch) -> None:
    pynvml = pytest.importorskip("pynvml")

    def init() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", init)


def test_nvml_absent_gives_a_one_line_reason(monkeypatch) -> None:
    _nvml_missing(monkeypatch)
    record, reason = nvml_record(0)
    assert record is None
    assert reason == "NVML unavailable: NVML Shared Library Not Found"


def test_cpu_record() -> None:
    rec = device_record(CPU)
    assert rec["type"] == "cpu" and rec["name"] and rec["torch_threads"] == 1
    assert rec["logical_cores"] >= rec["usable_cores"] >= 1
    assert device_slug(rec).startswith("cpu-")


@pytest.mark.gpu
def test_gpu_record_has_nvml_fields() -> None:
    rec = device_record(torch.device("cuda", 0))
    assert rec["name"] == torch.cuda.get_device_name(0)
    if "error" not in rec["nvml"]:
        assert {"driver", "sm_clock_mhz", "memory_clock_mhz", "power_limit_w", "temperature_c",
                "throttle_reasons"} <= set(rec["nvml"])


@pytest.mark.gpu
def test_gpu_record_without_nvml_still_builds(monkeypatch) -> None:
    _nvml_missing(monkeypatch)
    rec = device_record(torch.device("cuda", 0))
    assert rec["nvml"] == {"error": "NVML unavailable: NVML Shared Library Not Found"}
    assert environment("cuda", rec)["driver"] is None
