#!/usr/bin/env bash
# GPU speed: torch eager vs CUDA graphs vs accelerated (vs TensorRT plans when --bundle is given).
#
#   bash benchmarks/gpu.sh                                  # VAR-d16, batches 1 and 16, fp32
#   bash benchmarks/gpu.sh --models d16,d30 --dtype bf16    # any benchmarks/gpu.py option
#
# Needs only torch (CUDA build) and numpy; the package need not be installed. The JSON goes to
# $OUT/gpu.json when OUT is set, else out/gpu.json; a --json option overrides it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,clocks.sm,clocks.max.sm,power.limit \
    --format=csv || true
else
  echo "nvidia-smi not found"
fi

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  python=$(command -v python || command -v python3)
fi
export PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu.py --json "${OUT:-out}/gpu.json" "$@"
