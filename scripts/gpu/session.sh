#!/usr/bin/env bash
# One call on a remote GPU host (runs ON it, from the repo root): train the embedded teacher
# at a large batch from the latent pack (every image, captions and their phrasings), score its
# recall, distill the student from it and score that, bench the SD-1.5-shaped frame; results
# go to ${OUT} (see docs/gpu-session.md).
# Environment knobs (defaults for an H100): TEACHER_MIN, DISTILL_MIN, DEVICE, TEACHER_BATCH,
# TEACHER_LR, DISTILL_BATCH, DISTILL_LR, PAIRS, COMPILE (1: torch.compile the teacher),
# RECALL_NAMES and PHRASES (how many names and prompts eval draws), BENCH (0 skips the bench).
set -uo pipefail
TEACHER_MIN=${TEACHER_MIN:-4}; DISTILL_MIN=${DISTILL_MIN:-2.5}; DEVICE=${DEVICE:-cuda}
TEACHER_BATCH=${TEACHER_BATCH:-512}; DISTILL_BATCH=${DISTILL_BATCH:-64}; PAIRS=${PAIRS:-2048}
TEACHER_LR=${TEACHER_LR:-1e-3}; DISTILL_LR=${DISTILL_LR:-5e-5}
BENCH=${BENCH:-1}; COMPILE=${COMPILE:-0}; RECALL_NAMES=${RECALL_NAMES:-500}; PHRASES=${PHRASES:--1}
OUT=${OUT:?set OUT to the folder that comes back}
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import diffusers" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
rm -rf runs/gpu-teacher runs/gpu-student runs/gpu-logs  # a warm machine keeps runs/
LOGS=runs/gpu-logs; mkdir -p "$LOGS"
finish() {  # on any exit: logs, samples, metrics and configs in one archive (<= 8 files back)
    tar czf "${OUT}/results.tar.gz" -C runs --ignore-failed-read gpu-logs gpu-teacher/samples \
        gpu-teacher/metrics.jsonl gpu-teacher/config.json gpu-teacher/model/unet/config.json \
        gpu-teacher/model/training.json gpu-student/samples gpu-student/metrics.jsonl \
        gpu-student/config.json gpu-student/student/student.json \
        gpu-student/student/unet/config.json 2>/dev/null
    ls -la "${OUT}"
}
trap finish EXIT
quiet() { tr '\r' '\n' | grep -v -E '[0-9]+%\|' ; }  # drop progress-bar redraws
ship() {  # ship UNET_DIR NAME: xz the fp16 weights into 15 MiB parts under ${OUT} (<= 16 MiB)
    if command -v xz >/dev/null; then
        xz -T0 -6 -c "$1/diffusion_pytorch_model.safetensors" | split -b 15M -d - "${OUT}/$2-unet.xz.part"
    else
        $PY -c "import lzma,sys; d=lzma.compress(open(sys.argv[1],'rb').read()); n=15*2**20
[open(f'{sys.argv[2]}{i//n:02d}','wb').write(d[i:i+n]) for i in range(0,len(d),n)]" \
            "$1/diffusion_pytorch_model.safetensors" "${OUT}/$2-unet.xz.part"
    fi
}
nvidia-smi -L 2>/dev/null || true
$PY -m engine train-teacher --data .gpu/pack --vae assets/models/teacher/vae \
    --out runs/gpu-teacher --device "$DEVICE" --batch "$TEACHER_BATCH" --lr "$TEACHER_LR" \
    --dedupe-steps 1500 --include-heldout $([ "$COMPILE" = 1 ] && echo --compile) \
    --max-minutes "$TEACHER_MIN" --save-every 100000 --sample-every 1000 \
    --export-every 100000 2>&1 | quiet > "$LOGS/teacher.log"
status=${PIPESTATUS[0]}
[ "$status" = 0 ] && [ -f runs/gpu-teacher/model/unet/config.json ] || {
    echo "train-teacher exited $status"; tail -20 "$LOGS/teacher.log"; exit 1; }
ship runs/gpu-teacher/model/unet teacher
recall() {  # recall MODEL NAME [flags]: recall_* and phrase_* by the shipped recognizer
    $PY -m engine eval --model "$1" --recall-only --device "$DEVICE" --json "${@:3}" \
        --recall-names "$RECALL_NAMES" --phrases "$PHRASES" \
        > "$LOGS/eval-$2.json" 2> "$LOGS/eval-$2.log"
}
recall runs/gpu-teacher/model teacher --teacher-steps 20 --guidance 4
$PY -m engine distill --teacher runs/gpu-teacher/model --out runs/gpu-student \
    --real-data .gpu/pack --device "$DEVICE" --batch "$DISTILL_BATCH" --lr "$DISTILL_LR" \
    --regression-pairs "$PAIRS" --regression-weight 0.25 --gan-weight 1e-3 --steps 100000 \
    --max-minutes "$DISTILL_MIN" \
    --checkpoint-every 100000 --sample-every 250 --log-every 25 --progress json \
    > "$LOGS/distill.log" 2>&1
[ -f runs/gpu-student/student/unet/config.json ] && ship runs/gpu-student/student/unet student \
    && recall runs/gpu-student/student student
if [ "$BENCH" = 1 ]; then
    timeout 90 $PY -m engine bench --arch sd15 --device cuda --compile none --json > "$LOGS/bench-sd15.json" \
        2> "$LOGS/bench-sd15.log"
fi
