#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster (with accounting) on this Debian host, as root.
#
# Why: the SLURM profile and the executor plugin are only trustworthy when tested against a real
# slurmctld/slurmd/slurmdbd, and the plugin checks job status with `sacct`, which needs slurmdbd.
# The host's service manager refuses package service scripts, so every daemon is started by hand.
#
# Idempotent: packages are installed only when missing, files are rewritten only when their
# content changes, and a daemon that is already running (by its pid file) is left alone, unless
# its config changed, in which case it is restarted.
#
# Usage: sudo scripts/cluster-up.sh
# Environment (optional):
#   OMBRL_SLURM_DIR      scratch folder for state, spool, logs and pid files (/var/tmp/ombrl-slurm)
#   OMBRL_SLURM_ACCOUNT  account created for root and used by the test profile (ci)
#   OMBRL_SLURM_WAIT     seconds to wait for the node to become idle (60)
set -Eeuo pipefail

SCRATCH="${OMBRL_SLURM_DIR:-/var/tmp/ombrl-slurm}"
ACCOUNT="${OMBRL_SLURM_ACCOUNT:-ci}"
WAIT_S="${OMBRL_SLURM_WAIT:-60}"
CLUSTER=ci
PARTITION=debug
DB=slurm_acct_db
DB_USER=slurm
MYSQL_RUN=/run/mysqld
MYSQL_PID="$MYSQL_RUN/mysqld.pid"
MYSQL_SOCK="$MYSQL_RUN/mysqld.sock"
MYSQL_LOG="$MYSQL_RUN/error.log"
MUNGE_RUN=/run/munge
MUNGE_PID="$MUNGE_RUN/munged.pid"
MUNGE_LOG=/var/log/munge/munged.log
SLURM_CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf

T_START=$(date +%s.%N)
T_PHASE=$T_START
PHASE="start"

log() { printf 'cluster-up: %s\n' "$*"; }

# Print the failing phase, the given log's tail, and exit non-zero.
fail() {
    local message=$1 logfile=${2:-}
    printf 'cluster-up: error in phase "%s": %s\n' "$PHASE" "$message" >&2
    if [[ -n "$logfile" && -f "$logfile" ]]; then
        printf 'cluster-up: last lines of %s:\n' "$logfile" >&2
        tail -n 20 "$logfile" >&2 || true
    fi
    exit 1
}
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR

# Seconds since the timestamp $1 (from `date +%s.%N`), one decimal.
elapsed() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }'; }

phase() {
    local now
    now=$(date +%s.%N)
    [[ "$PHASE" == start ]] ||
        log "$(printf '%-10s done in %4s s' "$PHASE" "$(elapsed "$T_PHASE")")"
    PHASE=$1
    T_PHASE=$now
}

# True when the pid file names a live process whose command name is $2.
alive() {
    local pidfile=$1 name=$2 pid
    [[ -s "$pidfile" ]] || return 1
    pid=$(<"$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

# Retry a command every 0.2 s for up to $1 seconds.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# Stop the process named by a pid file (used only to restart a daemon whose config changed).
stop_pidfile() {
    local pidfile=$1 name=$2
    alive "$pidfile" "$name" || return 0
    kill "$(<"$pidfile")"
    wait_for 30 bash -c "! kill -0 $(<"$pidfile") 2>/dev/null" || fail "$name did not stop"
}

# Write $1 from stdin with mode $2 only when the content differs; return 0 if it changed.
write_if_changed() {
    local path=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f "$path" ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o root -g root "$tmp" "$path"
    rm -f "$tmp"
    return 0
}

[[ $EUID -eq 0 ]] || fail "run as root (it installs packages and starts system daemons)"

# ---------------------------------------------------------------------------------------------
phase packages
NEEDED=(/usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sinfo /usr/sbin/munged /usr/sbin/slurmdbd
    /usr/sbin/mariadbd)
missing=0
for binary in "${NEEDED[@]}"; do [[ -x "$binary" ]] || missing=1; done
if ((missing)); then
    log "installing slurm, munge, slurmdbd and mariadb (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || fail "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd \
        mariadb-server >/dev/null || fail "apt-get install failed"
fi
for binary in "${NEEDED[@]}"; do [[ -x "$binary" ]] || fail "$binary missing after install"; done

# ---------------------------------------------------------------------------------------------
phase munge
[[ -s /etc/munge/munge.key ]] || {
    mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
}
install -d -o munge -g munge -m 755 "$MUNGE_RUN"
install -d -o munge -g munge -m 700 /var/log/munge
if ! alive "$MUNGE_PID" munged; then
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" </dev/null >/dev/null 2>&1 ||
        fail "munged did not start" "$MUNGE_LOG"
fi
wait_for 10 bash -c 'munge -n | unmunge' || fail "munge round trip failed" "$MUNGE_LOG"

# ---------------------------------------------------------------------------------------------
phase mariadb
install -d -o mysql -g mysql -m 755 "$MYSQL_RUN"
if [[ ! -d /var/lib/mysql/mysql ]]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null ||
        fail "mariadb-install-db failed"
fi
if ! alive "$MYSQL_PID" mariadbd; then
    setsid -f /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file="$MYSQL_PID" \
        --socket="$MYSQL_SOCK" --log-error="$MYSQL_LOG" </dev/null >/dev/null 2>&1
fi
wait_for 30 mariadb-admin --socket="$MYSQL_SOCK" ping || fail "mariadb did not answer" "$MYSQL_LOG"
install -d -m 700 "$SCRATCH"
PASSFILE="$SCRATCH/slurmdbd.password"
[[ -s "$PASSFILE" ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PASSFILE")
DB_PASS=$(<"$PASSFILE")
mariadb --socket="$MYSQL_SOCK" <<SQL || fail "creating the accounting database failed" "$MYSQL_LOG"
CREATE DATABASE IF NOT EXISTS $DB;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB.* TO '$DB_USER'@'localhost';
SQL

# ---------------------------------------------------------------------------------------------
phase slurmdbd
install -d -m 755 /etc/slurm "$SCRATCH/log" "$SCRATCH/run" "$SCRATCH/state" "$SCRATCH/spool"
DBD_PID="$SCRATCH/run/slurmdbd.pid"
DBD_LOG="$SCRATCH/log/slurmdbd.log"
if write_if_changed "$DBD_CONF" 600 <<EOF; then
# Written by ombrl scripts/cluster-up.sh: accounting for a one-node test cluster.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DBD_PID
LogFile=$DBD_LOG
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageLoc=$DB
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF
    stop_pidfile "$DBD_PID" slurmdbd
fi
if ! alive "$DBD_PID" slurmdbd; then
    /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1 || fail "slurmdbd did not start" "$DBD_LOG"
fi

# ---------------------------------------------------------------------------------------------
phase slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# Leave room for the OS and the daemons: slurmd drains a node whose memory is below RealMemory.
REAL_MB=$((MEM_MB - (MEM_MB / 10 > 512 ? MEM_MB / 10 : 512)))
DEF_MEM=$((REAL_MB / CPUS))
CTLD_PID="$SCRATCH/run/slurmctld.pid"
SLURMD_PID="$SCRATCH/run/slurmd.pid"
CTLD_LOG="$SCRATCH/log/slurmctld.log"
SLURMD_LOG="$SCRATCH/log/slurmd.log"
slurm_changed=0
write_if_changed "$SLURM_CONF" 644 <<EOF && slurm_changed=1
# Written by ombrl scripts/cluster-up.sh: a one-node cluster for tests (this host, 127.0.0.1).
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
# A preempted or requeued (scontrol requeue) batch job runs again; it may restart after
# cred_expire seconds (default 120), and the scheduler looks at waiting jobs every 2 s (default 60).
JobRequeue=1
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
# Keep sbatch --comment (the plugin writes rule_<name>) in sacct's Comment field.
AccountingStoreFlags=job_comment
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
# A job that names no memory gets its CPUs' share, not the whole node.
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$DEF_MEM
EOF

# ---------------------------------------------------------------------------------------------
phase accounts
wait_for 30 sacctmgr -n list cluster || fail "slurmdbd did not answer sacctmgr" "$DBD_LOG"
has() { sacctmgr -n -P list "$1" "$2" format="$3" | grep -qx "$4"; }
has cluster "cluster=$CLUSTER" cluster "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
has account "account=$ACCOUNT" account "$ACCOUNT" ||
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=tests Organization=ombrl \
        >/dev/null
has user "user=root" defaultaccount "$ACCOUNT" ||
    sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
has user "user=root" defaultaccount "$ACCOUNT" || fail "user root has no default account $ACCOUNT"

# ---------------------------------------------------------------------------------------------
phase slurmctld
if ((slurm_changed)); then
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$CTLD_PID" slurmctld
fi
if ! alive "$CTLD_PID" slurmctld; then
    /usr/sbin/slurmctld </dev/null >/dev/null 2>&1 || fail "slurmctld did not start" "$CTLD_LOG"
fi
wait_for 30 scontrol ping || fail "slurmctld did not answer scontrol ping" "$CTLD_LOG"

phase slurmd
if ! alive "$SLURMD_PID" slurmd; then
    /usr/sbin/slurmd </dev/null >/dev/null 2>&1 || fail "slurmd did not start" "$SLURMD_LOG"
fi
node_idle() { [[ "$(sinfo -h -n "$HOST" -o %t)" == idle ]]; }
wait_for "$WAIT_S" node_idle || {
    sinfo -N -l >&2 || true
    fail "node $HOST not idle after ${WAIT_S} s (state: $(sinfo -h -n "$HOST" -o %t))" "$SLURMD_LOG"
}

# A state restored from the scratch folder can show idle before slurmd registers: run a step.
phase smoke
timeout 30 srun --quiet --job-name=cluster-up-smoke --time=1 true ||
    fail "srun on the idle node failed" "$SLURMD_LOG"

phase ready
log "$(printf 'cluster %s up in %s s: node %s, %s CPUs, %s MB, partition %s, account %s' \
    "$CLUSTER" "$(elapsed "$T_START")" "$HOST" "$CPUS" "$REAL_MB" \
    "$PARTITION" "$ACCOUNT")"
