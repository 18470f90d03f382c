#!/usr/bin/env bash
# synapse_btcv: pscv prepare SRC OUT --layout btcv (extra pscv prepare flags pass through)
set -euo pipefail
SRC=${1:?usage: $0 SRC OUT [pscv prepare flags]}; OUT=${2:?usage: $0 SRC OUT}; shift 2
exec pscv prepare "$SRC" "$OUT" --layout btcv --size "${SIZE:-256}" --seed "${SEED:-0}" --workers "${WORKERS:-4}" "$@"
