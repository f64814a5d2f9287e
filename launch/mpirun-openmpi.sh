#!/usr/bin/env bash
# Open MPI: N ranks on the hosts of $HOSTFILE, or on this machine. Ranks set their
# own thread counts (runtime.threads), so no core binding; oversubscription lets a
# laptop run more ranks than cores. As root, Open MPI also needs
# OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
#   HOSTFILE=hosts launch/mpirun-openmpi.sh 9 configs/sst2-lora.yaml
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 RANKS CONFIG [--set key=value ...] [--resume]" >&2; exit 2; }
n=$1; shift
hosts=(); [ -n "${HOSTFILE:-}" ] && hosts=(--hostfile "$HOSTFILE")
exec "${MPIRUN:-mpirun}" -n "$n" --bind-to none --map-by :OVERSUBSCRIBE "${hosts[@]}" \
    -x PYTHONUNBUFFERED=1 "${PYTHON:-python}" -m fedmpi run "$@"
