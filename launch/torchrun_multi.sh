#!/usr/bin/env bash
# Several nodes: run this on every node with the same RDZV_ENDPOINT and JOB_ID (c10d rendezvous,
# node ranks are assigned by the rendezvous; elastic restarts up to MAX_RESTARTS):
#   NNODES=4 RDZV_ENDPOINT=node0:29400 JOB_ID=acdc-42 launch/torchrun_multi.sh configs/acdc.yaml
# NNODES is a count, or MIN:MAX for an elastic job (a resumed run is bit-identical only at the same
# world size). Optional: NPROC (processes per node; default: the GPUs, or 2 on CPU), MAX_RESTARTS
# (default 3), LOCAL_ADDR (this node's address as the others reach it, e.g. a pod IP; default: its
# host name), RDZV_CONF (torchrun --rdzv-conf, e.g. is_host=1 where the endpoint is an address of
# this node that torch cannot recognise, join_timeout=600). PSCV_DRY_RUN=1 prints the torchrun
# command instead of running it. The k8s Indexed Job runs this script on every pod.
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG [section.key=value ...]}; shift
: "${NNODES:?set NNODES}" "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}" "${JOB_ID:?set JOB_ID}"
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c 'import torch; print(torch.cuda.device_count() or 2)')
fi
# One TCP store per rendezvous round, hosted by rank 0's workers. torch's default (the workers
# share the agents' rendezvous store) publishes the master address only in the first round, so a
# node that replaces a dead one would wait for it forever.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"
extra=()
if [[ -n "${LOCAL_ADDR:-}" ]]; then extra+=("--local-addr=$LOCAL_ADDR"); fi
if [[ -n "${RDZV_CONF:-}" ]]; then extra+=("--rdzv-conf=$RDZV_CONF"); fi
cmd=(torchrun --nnodes="$NNODES" --nproc-per-node="$NPROC"
     --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="$JOB_ID"
     --max-restarts="${MAX_RESTARTS:-3}" ${extra[@]+"${extra[@]}"}
     -m pscv_dist.train --config "$CONFIG" "$@")
if [[ -n "${PSCV_DRY_RUN:-}" ]]; then
  printf '%s\0' "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
