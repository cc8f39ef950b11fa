#!/usr/bin/env bash
# Prepare a remote GPU run (run locally, from the repo root, on the CPU machine): the emoji
# latent pack in .gpu/pack and the wheels the GPU image lacks in .whl (both git-ignored).
# Then run on the GPU host: command "bash scripts/gpu/session.sh", carrying .gpu and .whl.
# `prepare.sh refine` also writes .gpu/models for the two-call refine instead
# (docs/gpu-session.md).
set -euo pipefail
# The shipped UNet weights, vocabularies and the docs' images need not travel to the GPU host.
AWAY='^(assets/models/[a-z]*/unet/diffusion_pytorch_model\.safetensors|assets/models/[a-z]*/vocabulary\.safetensors|docs/[^/]*\.(png|gif))$'
STASH=${STASH:-/tmp/dmd-away}
if [ "${1:-}" = away ] || [ "${1:-}" = back ]; then  # move what need not travel out and back
    if [ "$1" = away ]; then
        git ls-files -z | grep -zE "$AWAY" | while IFS= read -r -d '' f; do
            mkdir -p "$STASH/$(dirname "$f")" && mv "$f" "$STASH/$f"; done
    else
        (cd "$STASH" && find . -type f -print0) | while IFS= read -r -d '' f; do
            mkdir -p "$(dirname "$f")" && mv "$STASH/$f" "$f"; done
    fi
    git status --short | head -3; exit 0
fi
[ -f data/emoji/manifest.json ] || python -m engine data emoji --out data/emoji
python -c "from engine.embedded.pack import pack_manifest; pack_manifest('.gpu/pack')" \
    2>/dev/null || python -m engine data pack --data data/emoji --out .gpu/pack
mkdir -p .whl
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl \
    "diffusers==$(version diffusers)" "emoji==$(version emoji)" importlib_metadata \
    "pytest==$(version pytest)" "pluggy==$(version pluggy)" "iniconfig==$(version iniconfig)" \
    "pygments==$(version pygments)" "packaging==$(version packaging)"
# What a call sends: tracked and untracked-not-ignored files plus its carried folders
# (<= 64 MiB); what AWAY matches is moved out of the tree for the call (`prepare.sh away`,
# then `prepare.sh back`).
travel() {
    (git ls-files -co --exclude-standard -z | grep -zvE "$AWAY" | xargs -0 cat 2>/dev/null
     find "$@" -type f -exec cat {} +) | wc -c
}
check() {
    local bytes; bytes=$(travel "$@")
    echo "a call carrying $*: $((bytes / 1048576)) MiB of 64"
    [ "$bytes" -lt $((62 * 1048576)) ] || { echo "too big to travel"; exit 1; }
}
if [ "${1:-}" = refine ]; then  # two calls: bench.sh (pack, wheels), refine.sh (models)
    teacher=assets/models/teacher/unet/diffusion_pytorch_model.safetensors
    student=assets/models/student/unet/diffusion_pytorch_model.safetensors
    mkdir -p .gpu/models
    python scripts/gpu/delta.py xz "$teacher" .gpu/models/teacher-unet.xz
    python scripts/gpu/delta.py delta "$teacher" "$student" .gpu/models/student-delta.xz
    check .gpu/pack .whl
    check .gpu/models
else
    check .gpu .whl
fi
echo "before the calls: bash scripts/gpu/prepare.sh away (UNet weights, docs images); after: back"
