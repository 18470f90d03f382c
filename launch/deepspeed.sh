#!/usr/bin/env bash
# The DeepSpeed launcher form (one node; add --hostfile for several), engine=deepspeed, ZeRO-1:
#   launch/deepspeed.sh configs/acdc.yaml [section.key=value ...]
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG [section.key=value ...]}; shift
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c 'import torch; print(torch.cuda.device_count() or 2)')
fi
exec deepspeed --num_gpus="$NPROC" --master_port="${MASTER_PORT:-29510}" --module pscv_dist.train \
  --config "$CONFIG" train.engine=deepspeed train.zero_stage="${ZERO_STAGE:-1}" "$@"
