#!/usr/bin/env bash
# Start a one-node SLURM cluster on this host (slurmctld + slurmd + munged, two fake GPUs). Run as root.
# Usage: tests/slurm_cluster.sh start|stop|status. Recipe and pitfalls: docs/cluster.md.
set -euo pipefail
STATE=${VISLIB_SLURM_STATE:-/var/lib/vislib-slurm}
PIDFILES=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)
H=$(hostname -s)

node_state() { sinfo -h -N -o %t 2>/dev/null | head -n1; }

start() {
  [ "$(id -u)" = 0 ] || { echo "slurm_cluster.sh: needs root (munged, mknod, slurmd)" >&2; exit 1; }
  if [ "$(node_state)" = idle ] || [ "$(node_state)" = mix ] || [ "$(node_state)" = alloc ]; then
    echo "slurm already up on $H"; return 0
  fi
  mkdir -p "$STATE" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null || runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null
  # gres/gpu drops File-less GPUs and rejects regular files, so the fake GPUs are char devices.
  for i in 0 1; do [ -c "$STATE/fakegpu$i" ] || mknod "$STATE/fakegpu$i" c 1 $((3 + 2 * i)); done
  # Memory limits without cgroups: slurmd samples each step's memory every second (jobacct_gather/linux)
  # and OverMemoryKill kills a step above its --mem, as a cgroup-enforcing cluster would.
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=vislib
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
GresTypes=gpu
NodeName=$H CPUs=$(nproc) RealMemory=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10 )) Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  echo "NodeName=$H Name=gpu File=$STATE/fakegpu[0-1]" > /etc/slurm/gres.conf
  # Fresh controller state: a node drained by an earlier bad registration would stay drained.
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
  /usr/sbin/slurmctld
  /usr/sbin/slurmd
  for _ in $(seq 60); do [ "$(node_state)" = idle ] && break; sleep 1; done
  if [ "$(node_state)" != idle ]; then
    scontrol show node >&2 || true; tail -20 /var/log/slurm/*.log >&2 || true
    echo "slurm_cluster.sh: node did not become idle" >&2; exit 1
  fi
  sinfo
}

stop() {
  # Only the daemons this script started, by their pidfiles.
  for p in "${PIDFILES[@]}"; do
    if [ -s "$p" ]; then kill "$(cat "$p")" 2>/dev/null || true; fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
