#!/usr/bin/env bash
# First call of the two-call refine on a remote GPU host (runs ON the host, from the repo root; see
# docs/gpu-session.md, "Refining the shipped student"): installs the carried wheels into
# /tmp/site and stages the latent pack in /tmp/dmd (both stay while the machine is warm, for
# scripts/gpu/refine.sh), then benchmarks the SD-1.5-shaped frame into ${OUT}.
set -uo pipefail
OUT=${OUT:?set OUT to the folder that comes back}; PY=${PY:-python3}
STAGE=${STAGE:-/tmp/dmd}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .gpu/pack ]; then  # staged for refine.sh; the bench itself does not need it
    mkdir -p "$STAGE" && rm -rf "$STAGE/pack" && cp -r .gpu/pack "$STAGE/pack" || exit 1
fi
nvidia-smi -L 2>/dev/null || true
# the tests that need CUDA (skipped on the CPU machine): real CUDA graphs against eager frames
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/engine/test_cuda_graphs.py \
    > "${OUT}/cuda-tests.log" 2>&1; echo "cuda tests exit $?"; tail -3 "${OUT}/cuda-tests.log"
COMPILE=${COMPILE:-none}
timeout "${BENCH_SECONDS:-120}" $PY -m engine bench --arch sd15 --device cuda \
    --compile "$COMPILE" --json > "${OUT}/bench-sd15-$COMPILE.json" 2> "${OUT}/bench-sd15-$COMPILE.log"
echo "bench exit $?"; cat "${OUT}/bench-sd15-$COMPILE.json"; tail -5 "${OUT}/bench-sd15-$COMPILE.log"
