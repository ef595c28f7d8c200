"""Build focusformer-fast and its extension ``focusformer_fast._C``.

``_C`` always holds the C++ CPU ops (``csrc/*.cpp``, ``csrc/cpu/*.cpp``); the CUDA ops
(``csrc/cuda/*.cu``) are added when torch is a CUDA build and a CUDA toolkit and cuBLASLt
(pip's ``nvidia`` wheels, or the toolkit's ``lib64``) are found.
Build against the installed torch: ``pip install --no-build-isolation -e ".[test]"``.

Environment:
    CUDA_HOME                    toolkit root; found from ``nvcc`` on PATH when unset.
    FOCUSFORMER_SKIP_CUDA_BUILD  ``1``: build the CPU ops only.
    FOCUSFORMER_CUDA_ARCHS       compute capabilities for nvcc, e.g. ``"8.0;9.0"`` (default);
                                 used when TORCH_CUDA_ARCH_LIST is unset.
    MAX_JOBS                     parallel compile jobs.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import torch
from setuptools import Extension, find_packages, setup
from torch.utils import cpp_extension

DEFAULT_CUDA_ARCHS = "8.0;9.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: ``$CUDA_HOME``, else the folder above the real ``nvcc`` binary."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    # `nvcc` on PATH may be a wrapper script outside the toolkit; nvcc names its own folder _HERE_.
    probe = subprocess.run([nvcc, "-v", "--dryrun", os.devnull], capture_output=True, text=True, check=False)
    found = re.search(r"^#\$ _HERE_=(.+)$", probe.stdout + probe.stderr, re.MULTILINE)
    bin_dir = found.group(1).strip() if found else os.path.dirname(os.path.realpath(nvcc))
    return os.path.dirname(bin_dir)


def cuda_build_home() -> str | None:
    """The toolkit to compile the CUDA sources with, or None for a CPU-only build (reason printed)."""
    if os.environ.get("FOCUSFORMER_SKIP_CUDA_BUILD") == "1":
        reason = "FOCUSFORMER_SKIP_CUDA_BUILD=1"
    elif torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    else:
        home = find_cuda_home()
        if home is not None and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            return home
        reason = f"no CUDA toolkit found (CUDA_HOME or nvcc on PATH gave {home!r})"
    print(f"focusformer_fast: building the C++ CPU ops only: {reason}", file=sys.stderr)
    return None


def find_cublaslt(site_packages: str, cuda_home: str) -> str | None:
    """The cuBLASLt shared library torch runs with (pip's ``nvidia/*/lib``), else the toolkit's."""
    candidates = sorted(glob.glob(os.path.join(site_packages, "nvidia", "*", "lib", "libcublasLt.so*")))
    candidates += sorted(glob.glob(os.path.join(cuda_home, "lib64", "libcublasLt.so*")))
    return candidates[0] if candidates else None


def sources(pattern: str) -> list[str]:
    """Files matching ``pattern``, relative to the project root, sorted."""
    return sorted(glob.glob(pattern, root_dir=ROOT))


def extension() -> Extension:
    """``focusformer_fast._C`` with the CPU sources, plus the CUDA sources when a toolkit is usable."""
    cpu_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    site_packages = os.path.dirname(os.path.dirname(torch.__file__))
    include_dirs = [
        path
        for path in (os.path.join(site_packages, "nvidia", cu, "include") for cu in ("cu13", "cu12"))
        if os.path.isdir(path)
    ]
    args = {"cxx": ["-O3", "-g0", "-fopenmp-simd"]}
    cuda_home = cuda_build_home()
    cublaslt = None if cuda_home is None else find_cublaslt(site_packages, cuda_home)
    if cuda_home is not None and cublaslt is None:
        print(f"focusformer_fast: building the C++ CPU ops only: no libcublasLt.so under {site_packages}/nvidia"
              f" or {cuda_home}/lib64", file=sys.stderr)
    if cublaslt is None:
        return cpp_extension.CppExtension("focusformer_fast._C", cpu_sources, extra_compile_args=args)
    # cpp_extension resolved CUDA_HOME at import, from the nvcc wrapper's folder if need be.
    cpp_extension.CUDA_HOME = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("FOCUSFORMER_CUDA_ARCHS", DEFAULT_CUDA_ARCHS))
    return cpp_extension.CUDAExtension(
        "focusformer_fast._C",
        cpu_sources + sources("csrc/cuda/*.cu"),
        include_dirs=include_dirs,
        define_macros=[("FOCUSFORMER_WITH_CUDA", None)],
        extra_compile_args={**args, "nvcc": ["-O3"]},
        # by path: pip's wheels ship libcublasLt.so.<major> only; at run time torch has loaded it already
        extra_link_args=[cublaslt],
    )


setup(
    packages=find_packages(include=["focusformer_fast", "focusformer_fast.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
