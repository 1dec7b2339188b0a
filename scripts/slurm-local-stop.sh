#!/usr/bin/env bash
# Stops the cluster that slurm-local.sh started under $ROOT: its jobs first, then its daemons by the ids in their
# pid files, then any job step daemon (slurmstepd) of this cluster that outlived slurmd. Nothing else is touched.
ROOT=${ROOT:-/tmp/slurm-local}
export SLURM_CONF=$ROOT/etc/slurm.conf
if [ -s "$ROOT/run/slurmctld.pid" ] && kill -0 "$(cat "$ROOT/run/slurmctld.pid")" 2>/dev/null; then
  jobs=$(squeue -h -o %i 2>/dev/null)
  [ -n "$jobs" ] && scancel $jobs 2>/dev/null
  for _ in $(seq 1 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
fi
# The SLURM daemons first, then what they report to (accounting, its database, munge); each group at once.
stop() {
  local pids=() f p
  for f in "$@"; do
    [ -s "$ROOT/$f" ] && p=$(cat "$ROOT/$f") && kill -TERM "$p" 2>/dev/null && pids+=("$p")
    rm -f "$ROOT/$f"
  done
  for p in "${pids[@]}"; do for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done; done
}
stop run/slurmd.pid run/slurmctld.pid
stop run/slurmdbd.pid mysql/run/mysqld.pid munge/munged.pid
for p in $(pgrep -x slurmstepd); do
  tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF" && kill -KILL "$p"
done
exit 0
