#!/usr/bin/env bash
# Everything a lent GPU should run, in stages that each fit one device command (10 minutes). For the
# verdict of one short session (build, GPU tests, the stream) use benchmarks/gpu_quick.sh instead.
#
#   bash benchmarks/gpu_session.sh STAGE [STAGE ...]
#
# Results go to $OUT (the device tool's folder that comes back; default benchmarks/results/gpu):
#   build     pip install --no-build-isolation --no-deps -e .   (against the machine's own torch)
#   tests     every gpu-marked test                              -> gpu_tests.txt, gpu_tests.xml
#   ops       per-op cuda / triton / PyTorch timings             -> ops_<device>.json, .md
#   stream    random-subnet train-step stream, graph modes       -> stream_<device>.json, .md
#   fixed     largest subnet: supernet vs dense and torch.compile -> fixed_<device>.json, .md
#   latency   autoformer-t latency table + validation (100 subnets, batch 1 and 64)
#                                                                -> latency_autoformer-t_<device>.json
#   anchors   baseline scripts kept outside the repo (anchors.py, stream_floor.py, latency.py), run on
#             the same machine -> anchors*.json, stream_floor.json. Put them in $BENCH_DIR
#             (default .gpu/bench, ignored through .git/info/exclude) and carry ".gpu" with the
#             device command.
# Each stage's log is $OUT/<stage>.log; the script goes on to the next stage when one fails and
# exits non-zero at the end if any did.
set -uo pipefail

OUT="${OUT:-benchmarks/results/gpu}"
BENCH_DIR="${BENCH_DIR:-.gpu/bench}"
mkdir -p "$OUT"
unset TRITON_INTERPRET

STAGES="build tests ops stream fixed latency anchors"
fail() { echo "gpu_session: $*" >&2; return 1; }
[ "$#" -ge 1 ] || { echo "gpu_session: name at least one stage: $STAGES" >&2; exit 2; }

device_slug() {
    python -c "import torch; print(torch.cuda.get_device_name().lower().replace(' ', '-'))"
}

need_gpu() {
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || fail "stage $1 needs a CUDA device (torch.cuda.is_available() is False)"
}

stage() {
    case "$1" in
        build)
            TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
                pip install --no-build-isolation --no-deps -e . \
                && python -c "from focusformer_fast.ops import _extension as e; assert e.has_cuda_ops(), e.load_error()"
            ;;
        tests)
            need_gpu tests || return 1
            python -m pytest -q -m gpu -rs tests --junitxml="$OUT/gpu_tests.xml" | tee "$OUT/gpu_tests.txt"
            ;;
        ops)
            need_gpu ops || return 1
            local dev; dev="$(device_slug)"
            python -m pytest -q -rs benchmarks/test_ops_gpu.py --benchmark-json="$OUT/ops_$dev.json" \
                && python benchmarks/render.py "$OUT/ops_$dev.json" -o "$OUT/ops_$dev.md"
            ;;
        stream|fixed)
            need_gpu "$1" || return 1
            local dev test; dev="$(device_slug)"
            # a node id, not -k: the module's name contains "test_train_stream" too, so -k would select all 16
            test=$([ "$1" = stream ] && echo test_train_stream || echo test_fixed_largest_subnet)
            python -m pytest -q -s -rs "benchmarks/test_train_stream.py::$test" --benchmark-json="$OUT/$1_$dev.json" \
                && python benchmarks/render.py "$OUT/$1_$dev.json" -o "$OUT/$1_$dev.md"
            ;;
        latency)
            need_gpu latency || return 1
            python -m focusformer_fast.profile --space autoformer-t --batch-sizes 1,64 --validate 100 \
                --output "$OUT/latency_autoformer-t_$(device_slug).json"
            ;;
        anchors)
            need_gpu anchors || return 1
            [ -d "$BENCH_DIR" ] || { fail "no $BENCH_DIR: put the baseline scripts there and carry it (see the header)"; return 1; }
            local rc=0 script
            for script in anchors.py stream_floor.py latency.py; do
                OUT="$OUT" python "$BENCH_DIR/$script" || rc=1
            done
            return "$rc"
            ;;
        *)
            fail "unknown stage '$1'; allowed: $STAGES"
            ;;
    esac
}

failed=()
for name in "$@"; do
    echo "== $name"
    start=$(date +%s)
    stage "$name" > >(tee "$OUT/$name.log") 2>&1 || failed+=("$name")
    echo "== $name: $(( $(date +%s) - start )) s"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu_session: failed stages: ${failed[*]}" >&2
    exit 1
fi
