#!/usr/bin/env bash
# Stops the daemons that slurm-local.sh started under $ROOT, by the ids in their pid files (nothing else).
ROOT=${ROOT:-/tmp/slurm-local}
for f in run/slurmd.pid run/slurmctld.pid run/slurmdbd.pid mysql/run/mysqld.pid munge/munged.pid; do
  [ -s "$ROOT/$f" ] || continue; p=$(cat "$ROOT/$f")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p"; for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$ROOT/$f"
done
