#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on this machine, for trying the slurm/
# templates and for the Slurm tests. Debian/Ubuntu, as root; needs neither
# systemd nor cgroups. Safe to run twice: a cluster that is already up is
# left alone.
#
#   sudo scripts/slurm-local/start.sh        # ~15 s from nothing installed
#   srun -n 3 hostname
#   sudo scripts/slurm-local/stop.sh
#
# Knobs (environment):
#   FEDMPI_SLURM_DIR        state, logs and pid files   (default /tmp/fedmpi-slurm)
#   FEDMPI_SLURM_CPUS       CPUs the node advertises     (default 8)
#   FEDMPI_SLURM_MEM        node memory in MB            (default 8000)
#   FEDMPI_SLURM_MINJOBAGE  seconds a finished job stays in squeue (default 4)
#   FEDMPI_SLURM_WAIT_S     how long to wait for the node to go idle (default 30)
#
# Things learnt the hard way:
#   * The node advertises more CPUs than it has cores (config_overrides), so
#     `srun -n 4` schedules on a 2-core box. A job asking for more CPUs than
#     advertised waits forever instead of failing: wrap srun/sbatch in
#     `timeout` in scripts and tests.
#   * There is no accounting database: `sacct` does not work. A short
#     MinJobAge makes finished jobs leave squeue fast, which keeps
#     `sbatch --wait` quick.
#   * PMIx support (--mpi=pmix) needs libpmix-dev installed *before* slurmd
#     starts; this script restarts slurmd when it had to install it.
#   * Open MPI 5 under --mpi=pmi2 silently runs N separate rank-0 processes;
#     use --mpi=pmix there (with PMIX_MCA_psec=native).
set -euo pipefail

STATE=${FEDMPI_SLURM_DIR:-/tmp/fedmpi-slurm}
CPUS=${FEDMPI_SLURM_CPUS:-8}
MEM=${FEDMPI_SLURM_MEM:-8000}
MINJOBAGE=${FEDMPI_SLURM_MINJOBAGE:-4}
WAIT_S=${FEDMPI_SLURM_WAIT_S:-30}
CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)

die() { echo "slurm-local: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_state() { sinfo -h -o %T 2>/dev/null | head -n1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages, writes $CONF, starts daemons)"

install_missing() {
  local need=()
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sinfo >/dev/null || need+=(slurm-client)
  command -v munged >/dev/null || [ -x /usr/sbin/munged ] || need+=(munge)
  dpkg -s libpmix-dev >/dev/null 2>&1 || need+=(libpmix2 libpmix-dev)
  [ ${#need[@]} -eq 0 ] && return 1
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  echo "slurm-local: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$STATE"
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
      >"$STATE/apt.log" 2>&1; then
    tail -n 20 "$STATE/apt.log" >&2
    die "apt-get failed (full log: $STATE/apt.log)"
  fi
  return 0
}

start_munge() {
  mkdir -p /run/munge
  chown munge:munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
  fi
  # `munge -n` succeeds only when a munged answers.
  munge -n >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
}

write_conf() {
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/spool"
  cat > "$CONF" <<CONF
# Written by fedmpi scripts/slurm-local/start.sh: one node, no cgroups, no accounting.
ClusterName=fedmpi-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=$MINJOBAGE
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

stop_pid() {  # stop_pid PIDFILE: end that daemon and wait for it to go
  alive "$1" || return 0
  local p; p=$(cat "$1")
  kill "$p"
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
}

wait_idle() {
  local tries=$((WAIT_S * 5)) state=""
  for _ in $(seq "$tries"); do
    state=$(node_state)
    case "$state" in idle|mixed|allocated|completing) return 0 ;; esac
    sleep 0.2
  done
  echo "slurm-local: node not up after ${WAIT_S}s (state '${state:-none}'); last log lines:" >&2
  tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
  return 1
}

installed=0
install_missing && installed=1
start_munge

if [ $installed = 0 ] && alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && [ -n "$(node_state)" ]; then
  echo "slurm-local: already running (state dir $STATE)"
else
  # Stale or half-started daemons (or a slurmd that predates libpmix-dev) go first.
  stop_pid "$STATE/slurmd.pid"
  stop_pid "$STATE/slurmctld.pid"
  write_conf
  slurmctld
  slurmd
fi
wait_idle
sinfo
