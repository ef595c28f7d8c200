#!/usr/bin/env bash
# The GPU verdict in one command, sized for a fresh H200 machine (its image has torch, Triton, nvcc,
# pytest-benchmark and pytest-xdist: nothing to install):
#
#   bash benchmarks/gpu_quick.sh           # run every stage (at most 9 minutes, the limits' sum)
#   bash benchmarks/gpu_quick.sh --plan    # print each stage and its time limit, run nothing
#
# Stages, each under its own time limit (a stage that overruns is killed and the next one runs):
#   build         the package and _C's CUDA ops for sm_90 only, against the machine's torch
#   tests-cuda    the gpu tests of the torch and cuda backends, graph mode included (own process)
#   tests-triton  the gpu tests of the triton backend, graph mode included (own processes)
#   stream        one train step per subnet of 30 random autoformer-t subnets, batch 128, bf16
#                 autocast, on eager torch (the baseline) and on triton and cuda, each with and
#                 without graphs, in one run
#   loader        the real train loader's img/s (CUDA defaults: workers, pinned memory, batches finished
#                 on the GPU) on 512 generated 500x375 JPEGs at 224, from the files and from the image
#                 cache, against what the eager (42 ms) and fused (12 ms) autoformer-t steps consume
#   sampler       train end to end on autoformer-t (synthetic 224x224 images, batch 128, eager torch,
#                 40 steps) with --sampler uniform, then --sampler focus: the focus sampler's cost as
#                 a ratio of step times (benchmarks/test_sampler_host.py train-e2e)
#   report        verdicts and ratios to eager torch (benchmarks/gpu_quick_report.py), from the
#                 stages' logs, the stream's, the loader's and the sampler's JSON and the timeline
# Results in $OUT (default benchmarks/results/gpu-quick), 7 files (the device tool brings back 8 at most):
#   gpu_quick.json        verdicts, stream, loader and sampler figures, timeline, device and versions
#   gpu_quick.md          the same as tables
#   stream_benchmark.json the stream's pytest-benchmark JSON
#   loader_benchmark.json the loader's pytest-benchmark JSON
#   sampler_e2e.json      the sampler stage's step and wall times, focus and uniform
#   logs.tar.gz           each stage's output: build.log tests-cuda.log tests-triton.log stream.log
#                         loader.log sampler.log (archived after the report has read them)
#   timeline.tsv          stage, start (epoch s), seconds, exit status (124: killed at its limit), limit
set -uo pipefail
cd "$(dirname "$0")/.."

PLAN=(build:100 tests-cuda:70 tests-triton:110 stream:160 loader:40 sampler:50 report:10)
OUT="${OUT:-benchmarks/results/gpu-quick}"

plan() {
    local total=0 entry
    for entry in "${PLAN[@]}"; do
        printf '%-13s %4d s\n' "${entry%%:*}" "${entry##*:}"
        total=$((total + ${entry##*:}))
    done
    echo "total $total s"
}

# pytest-xdist's workers compile Triton variants in parallel; without it the tests run serially.
parallel() {
    python -c "import xdist" 2>/dev/null && echo "-n $1"
}

stage() {
    case "$1" in
        build)
            TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="$(nproc)" pip install --no-build-isolation --no-deps -e . \
                && python -c "from focusformer_fast.ops import _extension as e; assert e.has_cuda_ops(), e.load_error()"
            ;;
        tests-cuda)
            FOCUSFORMER_TEST_BACKENDS=torch,cuda python -m pytest -q -m gpu -rfEs $(parallel 4) \
                tests/test_ops_backends.py tests/test_ops_backends_cuda.py tests/test_ops_casts.py tests/test_models_graphs.py
            ;;
        tests-triton)
            local rc=0
            FOCUSFORMER_TEST_BACKENDS=triton python -m pytest -q -m gpu -rfEs $(parallel 6) \
                tests/test_ops_backends.py tests/test_ops_casts.py tests/test_models_graphs.py || rc=1
            python -m pytest -q -rfEs tests/test_ops_backends_triton.py tests/test_ops_kernels_linear.py || rc=1
            return "$rc"
            ;;
        stream)
            python -m pytest -q -s -rs "benchmarks/test_train_stream.py::test_train_stream" \
                --benchmark-json="$OUT/stream_benchmark.json"
            ;;
        loader)
            python -m pytest -q -s -rs "benchmarks/test_data_pipeline.py::test_loader_on_gpu" \
                --benchmark-json="$OUT/loader_benchmark.json"
            ;;
        sampler)
            python benchmarks/test_sampler_host.py train-e2e --steps 40 --out "$OUT/sampler_e2e.json"
            ;;
        report)
            python benchmarks/gpu_quick_report.py "$OUT"
            ;;
        *)
            echo "gpu_quick: unknown stage '$1'" >&2
            return 2
            ;;
    esac
}

case "${1:-}" in
    --plan)
        plan
        exit 0
        ;;
    --stage)
        stage "$2"
        exit $?
        ;;
    "")
        ;;
    *)
        echo "usage: bash benchmarks/gpu_quick.sh [--plan]" >&2
        exit 2
        ;;
esac

mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
plan
printf 'stage\tstart\tseconds\tstatus\tlimit\n' > "$OUT/timeline.tsv"
failed=0
for entry in "${PLAN[@]}"; do
    name="${entry%%:*}" limit="${entry##*:}"
    echo "== $name (limit $limit s)"
    start=$(date +%s)
    # TERM at the limit less 5 s, KILL 5 s later: a stage never outlasts its limit. The report
    # (last) reads the timeline of the stages before it and writes its own files.
    if [ "$name" = report ]; then
        timeout --kill-after=5 "$((limit - 5))" bash "$0" --stage "$name"
    else
        timeout --kill-after=5 "$((limit - 5))" bash "$0" --stage "$name" > >(tee "$OUT/$name.log") 2>&1
    fi
    status=$?
    seconds=$(( $(date +%s) - start ))
    [ "$name" = report ] || printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$start" "$seconds" "$status" "$limit" \
        >> "$OUT/timeline.tsv"
    echo "== $name: status $status, $seconds s"
    [ "$status" -eq 0 ] || failed=1
done
# The device tool brings back at most 8 files: the stage logs travel as one archive.
(cd "$OUT" && tar -czf logs.tar.gz ./*.log && rm -f ./*.log)
exit "$failed"
