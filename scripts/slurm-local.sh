#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian 12, SLURM 22.05), run as root without systemd or cgroups,
# so tests and `make slurm-up` exercise the real sbatch/srun/requeue path. Adapted from ../shared/slurm-local.
# Installs the Debian packages it needs (slurm-wlm daemons, munge, MariaDB for accounting) when they are missing.
#
# Usage: [ROOT=/tmp/slurm-local] [PORT=6817] [AUTH=munge|none] [ACCT=dbd|none] scripts/slurm-local.sh
#   then: export SLURM_CONF=$ROOT/etc/slurm.conf          stop with scripts/slurm-local-stop.sh (same ROOT)
# Everything lives under $ROOT; the node is 'localhost' (all CPUs of this machine), the partition 'debug'.
# PORT, PORT+1, PORT+2 are slurmctld, slurmd and slurmdbd, so a second cluster (a test session) can run beside one.
# Accounting (ACCT=dbd) lets submitit see jobs that were killed; without it such a job never reports done.
# A fresh cluster numbers jobs from 1 again: give submitit a fresh folder for each cluster.
# Exit status 3: this machine cannot run it (not root, or packages missing and no apt-get).
set -euo pipefail
ROOT=${ROOT:-/tmp/slurm-local}; PORT=${PORT:-6817}; AUTH=${AUTH:-munge}; ACCT=${ACCT:-dbd}
[ "$(id -u)" = 0 ] || { echo "slurm-local: must run as root (the daemons run as root)" >&2; exit 3; }
need="slurmd slurmctld slurm-client munge"; [ "$ACCT" = dbd ] && need="$need slurmdbd mariadb-server"
missing=$(for p in $need; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || { echo "slurm-local: missing packages" $missing "and no apt-get" >&2; exit 3; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
CPUS=$(nproc)
wait_port() {  # until something listens on 127.0.0.1:$1 (a pid file appears before a daemon is ready)
  for _ in $(seq 1 120); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.25; done
  echo "slurm-local: nothing listens on port $1; see $ROOT/log" >&2; return 1
}
# A requeued job waits cred_expire seconds before it may start again (SLURM's default 120 s); short for tests.
CRED_EXPIRE=${CRED_EXPIRE:-10}
mkdir -p "$ROOT"/{etc,state,spool,log,run,munge,mysql/data,mysql/run}
chmod 711 "$ROOT/munge"
export SLURM_CONF=$ROOT/etc/slurm.conf
if [ "$AUTH" = munge ]; then
  [ -f "$ROOT/munge/munge.key" ] || mungekey -c -k "$ROOT/munge/munge.key" -b 1024
  munged --force --key-file="$ROOT/munge/munge.key" --socket="$ROOT/munge/munge.socket.2" \
         --pid-file="$ROOT/munge/munged.pid" --log-file="$ROOT/munge/munged.log" --seed-file="$ROOT/munge/munged.seed"
  AUTHLINES="AuthType=auth/munge
AuthInfo=socket=$ROOT/munge/munge.socket.2,cred_expire=$CRED_EXPIRE"
  CREDLINE="CredType=cred/munge"
else
  AUTHLINES="AuthType=auth/none
AuthInfo=cred_expire=$CRED_EXPIRE"
  CREDLINE="CredType=cred/none"
fi
if [ "$ACCT" = dbd ]; then
  [ -d "$ROOT/mysql/data/mysql" ] || mariadb-install-db --user=root --datadir="$ROOT/mysql/data" \
    --auth-root-authentication-method=socket > "$ROOT/mysql/install.log" 2>&1
  mariadbd --user=root --datadir="$ROOT/mysql/data" --socket="$ROOT/mysql/run/mysqld.sock" \
           --pid-file="$ROOT/mysql/run/mysqld.pid" --skip-networking --log-error="$ROOT/mysql/error.log" \
           --innodb-buffer-pool-size=64M > /dev/null 2>&1 &
  for _ in $(seq 1 60); do [ -S "$ROOT/mysql/run/mysqld.sock" ] && break; sleep 0.5; done
  mariadb -S "$ROOT/mysql/run/mysqld.sock" -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' \
    IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > "$ROOT/etc/slurmdbd.conf" <<EOF
$AUTHLINES
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$ROOT/log/slurmdbd.log
PidFile=$ROOT/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ROOT/etc/slurmdbd.conf"                  # slurmdbd insists on 600, owned by SlurmUser
  ACCTLINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
JobAcctGatherType=jobacct_gather/linux"
  [ "$AUTH" = munge ] && ACCTLINES="$ACCTLINES
AccountingStoragePass=$ROOT/munge/munge.socket.2"      # munge socket for the ctld->dbd connection
else
  ACCTLINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
# sched_interval/bf_interval: a requeued or newly eligible job starts within seconds, not a minute; KillWait:
# tasks that ignore SIGTERM (submitit's do) are killed after 5 s, not 30 (tests wait on both).
cat > "$SLURM_CONF" <<EOF
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
$AUTHLINES
$CREDLINE
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCTLINES
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$ACCT" = dbd ]; then
  MYSQL_UNIX_PORT=$ROOT/mysql/run/mysqld.sock slurmdbd     # reads slurmdbd.conf from dirname($SLURM_CONF)
  wait_port $((PORT + 2))                                  # slurmctld gives up at once if slurmdbd is not up
  sacctmgr -n list cluster format=cluster | grep -qw local || sacctmgr -i add cluster local > /dev/null
fi
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost                     # -N: the node is named localhost whatever the hostname
for _ in $(seq 1 60); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 0.5; done
sinfo -h -o %t | grep -q idle || { echo "slurm-local: node not idle; see $ROOT/log" >&2; exit 1; }
echo "export SLURM_CONF=$SLURM_CONF"
