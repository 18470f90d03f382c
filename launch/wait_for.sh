#!/usr/bin/env bash
# Wait until PATH exists, then exit 0; exit 1 if it has not appeared after TIMEOUT_S seconds
# (default: one day). The k8s stages use it as an init container to wait for the previous stage's
# output, which always appears atomically (the store is renamed into place; summary.json and
# results.json are written to a temporary name and renamed):
#   launch/wait_for.sh /data/acdc.zarr
set -euo pipefail
TARGET=${1:?usage: $0 PATH [TIMEOUT_S]}
TIMEOUT=${2:-86400}
STEP=${WAIT_STEP_S:-10}
start=$SECONDS
until [[ -e "$TARGET" ]]; do
  if (( SECONDS - start >= TIMEOUT )); then
    echo "wait_for: $TARGET did not appear within ${TIMEOUT} s" >&2
    exit 1
  fi
  echo "wait_for: waiting for $TARGET"
  sleep "$STEP"
done
echo "wait_for: found $TARGET"
