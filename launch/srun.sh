#!/usr/bin/env bash
# Slurm, inside an allocation (salloc, or an sbatch script: see slurm/run.sbatch):
# N tasks across the allocation's nodes; fedmpi reads SLURM_PROCID/SLURM_NTASKS and
# rendezvouses on the first node. --kill-on-bad-exit ends every rank if one fails.
#   salloc -N 2 -n 9 launch/srun.sh 9 configs/sst2-lora.yaml
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 TASKS CONFIG [--set key=value ...] [--resume]" >&2; exit 2; }
n=$1; shift
exec srun -n "$n" --kill-on-bad-exit=1 ${SRUN_ARGS:-} "${PYTHON:-python}" -m fedmpi run "$@"
