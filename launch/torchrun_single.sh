#!/usr/bin/env bash
# One node, all its GPUs (or NPROC CPU processes with gloo):
#   launch/torchrun_single.sh configs/acdc.yaml [section.key=value ...]
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG [section.key=value ...]}; shift
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c 'import torch; print(torch.cuda.device_count() or 2)')
fi
exec torchrun --standalone --nproc-per-node="$NPROC" --max-restarts="${MAX_RESTARTS:-0}" \
  -m pscv_dist.train --config "$CONFIG" "$@"
