#!/usr/bin/env bash
# torchrun: N processes per node. One node by default; for several, set NNODES,
# NODE_RANK and MASTER_ADDR (the first node) on each, e.g. from a scheduler.
#   launch/torchrun.sh 5 configs/quickstart.yaml
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PROCS_PER_NODE CONFIG [--set key=value ...] [--resume]" >&2; exit 2; }
n=$1; shift
exec "${TORCHRUN:-torchrun}" --nproc-per-node "$n" --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" -m fedmpi run "$@"
