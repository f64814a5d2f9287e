#!/usr/bin/env bash
# MPICH (Hydra): N ranks on the hosts of $HOSTFILE (one host per line, optionally
# host:slots), or on this machine. Rank 0 is the server; it opens the rendezvous
# store and tells the others its address, so no MASTER_ADDR is needed.
#   HOSTFILE=hosts launch/mpirun-mpich.sh 9 configs/sst2-lora.yaml
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 RANKS CONFIG [--set key=value ...] [--resume]" >&2; exit 2; }
n=$1; shift
hosts=(); [ -n "${HOSTFILE:-}" ] && hosts=(-f "$HOSTFILE")
exec "${MPIEXEC:-mpiexec}" -n "$n" "${hosts[@]}" -genv PYTHONUNBUFFERED 1 \
    "${PYTHON:-python}" -m fedmpi run "$@"
