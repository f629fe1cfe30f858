#!/usr/bin/env bash
# Every hardware figure in one run (< 8 min on one GPU): Pallas kernels vs the jnp reference,
# attention TFLOP/s vs cuDNN and XLA, train-step MFU of a LlamaGen-L-shaped model (scan + remat),
# batch-1 decode latency vs the weight-bandwidth floor. One JSON: $1 or $OUT/device_check.json.
#
#   bash benchmarks/device_check.sh [OUT.json] [--smoke] [more flags of device_check.py]
#
# --smoke runs tiny sizes on a CPU (Pallas interpreted); tests/benchmarks/test_device_check.py
# runs it so the script is known to work before a GPU is lent.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/device_check.json"
if [[ $# -gt 0 && "$1" != --* ]]; then out="$1"; shift; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec timeout "${DEVICE_CHECK_TIMEOUT:-470}" python benchmarks/device_check.py --out "$out" "$@"
