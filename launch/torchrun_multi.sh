#!/usr/bin/env bash
# Several nodes: run this on every node with the same RDZV_ENDPOINT and JOB_ID (c10d rendezvous,
# node ranks are assigned by the rendezvous; elastic restarts up to MAX_RESTARTS):
#   NNODES=4 RDZV_ENDPOINT=node0:29400 JOB_ID=acdc-42 launch/torchrun_multi.sh configs/acdc.yaml
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG [section.key=value ...]}; shift
: "${NNODES:?set NNODES}" "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}" "${JOB_ID:?set JOB_ID}"
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c 'import torch; print(torch.cuda.device_count() or 2)')
fi
exec torchrun --nnodes="$NNODES" --nproc-per-node="$NPROC" \
  --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="$JOB_ID" \
  --max-restarts="${MAX_RESTARTS:-3}" \
  -m pscv_dist.train --config "$CONFIG" "$@"
