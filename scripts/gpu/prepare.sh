#!/usr/bin/env bash
# Prepare a lent GPU session (run here, from the repo root, on the CPU machine): the emoji
# latent pack in .gpu/pack and the wheels the GPU image lacks in .whl (both git-ignored).
# Then call the device tool with: command "bash scripts/gpu/session.sh", carry [".gpu", ".whl"].
set -euo pipefail
[ -f data/emoji/manifest.json ] || python -m engine data emoji --out data/emoji
python -c "from engine.embedded.pack import pack_manifest; pack_manifest('.gpu/pack')" \
    2>/dev/null || python -m engine data pack --data data/emoji --out .gpu/pack
mkdir -p .whl
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl \
    "diffusers==$(version diffusers)" "emoji==$(version emoji)" importlib_metadata
# What travels: tracked and untracked-not-ignored files plus the carried folders (<= 64 MiB).
travel=$( (git ls-files -co --exclude-standard -z | xargs -0 cat 2>/dev/null; \
           find .gpu .whl -type f -exec cat {} +) | wc -c)
echo "travels: $((travel / 1048576)) MiB of 64"
[ "$travel" -lt $((62 * 1048576)) ] || { echo "too big to travel"; exit 1; }
