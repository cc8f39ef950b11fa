#!/usr/bin/env bash
# Second call of the two-call refine on a remote GPU host (runs ON the host after scripts/gpu/bench.sh on the
# same warm machine): rebuilds the shipped teacher and student from the carried .gpu/models
# (teacher-unet.xz, student-delta.xz; made by `scripts/gpu/prepare.sh refine`), continues
# one-step DMD2 from the student at a GPU batch, and sends back the final student and the
# middle checkpoint's raw (not EMA) weights as fp16 deltas to the teacher (15 MiB parts) plus logs and samples.
# TEACHER_MIN > 0 first trains the shipped teacher further for that many minutes (every image,
# names and phrasings), moves the student onto it with `engine transfer`, scores both
# (recall), sends the new teacher back as teacher-unet.xz.part* and distills from the moved
# student against the new teacher (its deltas are then to the new teacher).
# Knobs: MINUTES, BATCH, LR, RATIO, PAIRS, STEPS_PER_CHECKPOINT, CRITIC_WARMUP, EMA,
# TEACHER_MIN, TEACHER_BATCH, TEACHER_LR, RECALL_NAMES, PHRASES, STUDENT_TIMESTEPS (the distill's student schedule,
# 999; 999,399 for the shipped two-step default).
# The first H100 run (2026-11-26) ran BATCH=128 at ~1.2 steps/s, probably bound by kernel launches (not profiled; a 17M UNet
# on 16x16 latents), so a larger batch should cost little more time per step.
set -uo pipefail
OUT=${OUT:?set OUT to the folder that comes back}; PY=${PY:-python3}
STAGE=${STAGE:-/tmp/dmd}; MINUTES=${MINUTES:-5}; BATCH=${BATCH:-512}; LR=${LR:-3e-5}
RATIO=${RATIO:-3}; PAIRS=${PAIRS:-2048}; EVERY=${STEPS_PER_CHECKPOINT:-200}
CRITIC_WARMUP=${CRITIC_WARMUP:-100}; EMA=${EMA:-0.99}; STUDENT_TIMESTEPS=${STUDENT_TIMESTEPS:-999}
TEACHER_MIN=${TEACHER_MIN:-0}; TEACHER_BATCH=${TEACHER_BATCH:-512}; TEACHER_LR=${TEACHER_LR:-3e-4}
RECALL_NAMES=${RECALL_NAMES:-500}; PHRASES=${PHRASES:--1}
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ -f "$STAGE/pack/manifest.json" ] || { echo "no staged pack: run scripts/gpu/bench.sh first"; exit 1; }
RUN=runs/gpu-refine; TEACHER=$STAGE/teacher; INIT=$STAGE/init-student; MORE=runs/gpu-teacher-more
rm -rf "$RUN" "$TEACHER" "$INIT" "$MORE" "$STAGE/moved-student"
mkdir -p "$RUN/logs" "$TEACHER/unet" "$INIT/unet"
finish() {
    tar czf "${OUT}/results.tar.gz" -C runs --ignore-failed-read gpu-refine/logs \
        gpu-refine/samples gpu-refine/metrics.jsonl gpu-refine/config.json \
        gpu-refine/student/student.json gpu-teacher-more/samples gpu-teacher-more/metrics.jsonl \
        gpu-teacher-more/model/training.json 2>/dev/null
    ls -la "${OUT}"
}
trap finish EXIT
W=diffusion_pytorch_model.safetensors
cp -r assets/models/teacher/{model_index.json,training.json,scheduler,vae} "$TEACHER/"
cp -r "$STAGE/pack/text_encoder" "$STAGE/pack/tokenizer" "$TEACHER/"  # MiniLM, pruned
cp assets/models/teacher/unet/config.json "$TEACHER/unet/"
cp assets/models/student/unet/config.json "$INIT/unet/"
cp -r assets/models/student/{student.json,model_index.json,scheduler,vae} "$INIT/"
cp -r "$STAGE/pack/text_encoder" "$STAGE/pack/tokenizer" "$INIT/"  # a whole model: eval loads it
$PY scripts/gpu/delta.py unxz .gpu/models/teacher-unet.xz "$TEACHER/unet/$W" &&
$PY scripts/gpu/delta.py apply "$TEACHER/unet/$W" .gpu/models/student-delta.xz "$INIT/unet/$W" ||
    exit 1
recall() {  # recall MODEL NAME [flags]: recall_* and phrase_* by the shipped recognizer
    $PY -m engine eval --model "$1" --recall-only --device "${DEVICE:-cuda}" --json "${@:3}" \
        --recall-names "$RECALL_NAMES" --phrases "$PHRASES" \
        > "$RUN/logs/eval-$2.json" 2> "$RUN/logs/eval-$2.log"
}
if [ "$TEACHER_MIN" != 0 ]; then
    $PY -m engine train-teacher --data "$STAGE/pack" --init-from "$TEACHER" --vae "$TEACHER/vae" \
        --out "$MORE" \
        --device "${DEVICE:-cuda}" --batch "$TEACHER_BATCH" --lr "$TEACHER_LR" --warmup 200 \
        --include-heldout --dedupe-steps 0 --max-minutes "$TEACHER_MIN" --save-every 100000 \
        --sample-every 1000 --export-every 100000 2>&1 | tr '\r' '\n' \
        | grep -v -E '[0-9]+%\|' > "$RUN/logs/teacher.log"
    [ -f "$MORE/model/unet/$W" ] || { echo "train-teacher failed"; tail -20 "$RUN/logs/teacher.log"; exit 1; }
    $PY scripts/gpu/delta.py xz "$MORE/model/unet/$W" "$STAGE/teacher-unet.xz" &&
        split -b 15M -d "$STAGE/teacher-unet.xz" "${OUT}/teacher-unet.xz.part"
    $PY -m engine transfer --student "$INIT" --teacher-before "$TEACHER" \
        --teacher-after "$MORE/model" --out "$STAGE/moved-student" > "$RUN/logs/transfer.log" 2>&1 ||
        { echo "transfer failed"; cat "$RUN/logs/transfer.log"; exit 1; }
    recall "$MORE/model" teacher --teacher-steps 20 --guidance 4
    recall "$STAGE/moved-student" moved-student
    TEACHER=$MORE/model; INIT=$STAGE/moved-student
fi
$PY -m engine distill --teacher "$TEACHER" --out "$RUN" --init-from "$INIT" --method dmd2 \
    --student-timesteps "$STUDENT_TIMESTEPS" --real-data "$STAGE/pack" --device "${DEVICE:-cuda}" --batch "$BATCH" \
    --lr "$LR" --warmup-steps 100 --critic-ratio "$RATIO" --gan-weight 1e-3 \
    --critic-warmup-steps "$CRITIC_WARMUP" --ema-decay "$EMA" \
    --regression-weight 0.5 --regression-pairs "$PAIRS" --steps 100000 \
    --max-minutes "$MINUTES" --checkpoint-every "$EVERY" --keep-checkpoints 100 \
    --sample-every 300 --progress json > "$RUN/logs/distill.log" 2>&1
echo "distill exit $?"; grep -v '"event": "progress"' "$RUN/logs/distill.log" | tail -5
ship() {  # ship WEIGHTS NAME: fp16 delta to the teacher, in 15 MiB parts
    $PY scripts/gpu/delta.py delta "$TEACHER/unet/$W" "$1" "$STAGE/$2.xz" &&
        split -b 15M -d "$STAGE/$2.xz" "${OUT}/$2.xz.part"
}
[ -f "$RUN/student/unet/$W" ] && ship "$RUN/student/unet/$W" student-delta
mapfile -t points < <(ls -d "$RUN"/checkpoints/step-* 2>/dev/null | sort -t- -k2 -n)
# the middle one (the last is the final student); not with a new teacher: 64 MiB come back
if [ "${#points[@]}" -ge 3 ] && [ "$TEACHER_MIN" = 0 ]; then
    middle=${points[$(( (${#points[@]} - 1) / 2 ))]}
    echo "${middle##*/}" > "$RUN/logs/middle.txt"
    ship "$middle/model.safetensors" middle-delta
fi
