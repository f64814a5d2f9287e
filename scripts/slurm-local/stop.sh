#!/usr/bin/env bash
# Stop the daemons scripts/slurm-local/start.sh started, by their pid files
# (never by name: other Slurm or munge processes on the machine are not ours).
# Usage: sudo scripts/slurm-local/stop.sh [--keep-munge]
STATE=${FEDMPI_SLURM_DIR:-/tmp/fedmpi-slurm}
pidfiles=("$STATE/slurmd.pid" "$STATE/slurmctld.pid")
[ "${1:-}" = "--keep-munge" ] || pidfiles+=(/run/munge/munged.pid)
for f in "${pidfiles[@]}"; do
  [ -s "$f" ] || continue
  p=$(cat "$f")
  kill "$p" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && echo "slurm-local: pid $p ($f) still running" >&2
done
exit 0
