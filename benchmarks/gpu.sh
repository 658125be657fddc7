#!/usr/bin/env bash
# GPU speed: eager against the package's CUDA-graph fast path, baseline and accelerated (and a
# bundle's TensorRT plans when --bundle is given). Any benchmarks/gpu.py option passes through:
#
#   bash benchmarks/gpu.sh                                  # VAR-d16, batches 1 and 16
#   bash benchmarks/gpu.sh --models d16,d30 --reps 5
#
# Runs the package from this checkout (torch with CUDA, numpy, tqdm, click, pillow and, for the
# embedded model, safetensors must be importable). The JSON goes to $OUT/gpu.json when OUT is set,
# else out/gpu.json; a --json option overrides it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,clocks.sm,clocks.max.sm,power.limit \
    --format=csv || true
else
  echo "nvidia-smi not found"
fi

python=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/gpu.py --json "${OUT:-out}/gpu.json" "$@"
