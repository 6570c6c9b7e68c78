#!/usr/bin/env bash
# Stop the one-node SLURM cluster that scripts/cluster-up.sh started.
#
# Why by pid file: the host has no service manager, and a broad `pkill slurm` could hit processes
# that are not ours. Each daemon is stopped by the PID its own pid file names (checked against
# the expected command name), in reverse start order (daemons that do not depend on each other
# together), and waited for. Jobs are cancelled first. Never fails when a daemon is already
# down; exits non-zero only when one survives SIGKILL.
#
# Usage: sudo scripts/cluster-down.sh
# Environment (optional): OMBRL_SLURM_DIR, the scratch folder given to cluster-up.sh.
set -uo pipefail

SCRATCH="${OMBRL_SLURM_DIR:-/var/tmp/ombrl-slurm}"
T_START=$(date +%s.%N)
status=0

# Stop a group of daemons together, each given as NAME:PIDFILE: SIGTERM to all, wait up to 30 s,
# then SIGKILL to any left. Daemons in one group do not need each other to shut down cleanly.
stop() {
    local entry name pidfile pid i
    local -A pids=()
    for entry in "$@"; do
        name=${entry%%:*}
        pidfile=${entry#*:}
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if ! [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
            printf 'cluster-down: %-9s not running\n' "$name"
            rm -f "$pidfile"
            continue
        fi
        kill -TERM "$pid" 2>/dev/null
        pids[$name]=$pid
    done
    for ((i = 0; i < 300; i++)); do
        for name in "${!pids[@]}"; do
            kill -0 "${pids[$name]}" 2>/dev/null && continue
            printf 'cluster-down: %-9s stopped (pid %s)\n' "$name" "${pids[$name]}"
            unset "pids[$name]"
        done
        ((${#pids[@]})) || return 0
        sleep 0.1
    done
    for name in "${!pids[@]}"; do
        printf 'cluster-down: %-9s (pid %s) ignored SIGTERM for 30 s: SIGKILL\n' \
            "$name" "${pids[$name]}"
        kill -KILL "${pids[$name]}" 2>/dev/null
    done
    sleep 1
    for name in "${!pids[@]}"; do
        if kill -0 "${pids[$name]}" 2>/dev/null; then
            printf 'cluster-down: %-9s (pid %s) is still running\n' "$name" "${pids[$name]}" >&2
            status=1
        fi
    done
}

# Cancel queued and running jobs first, so that no job step outlives its slurmd.
ctld_pid=$(cat "$SCRATCH/run/slurmctld.pid" 2>/dev/null || true)
if [[ "$ctld_pid" =~ ^[0-9]+$ && "$(cat "/proc/$ctld_pid/comm" 2>/dev/null)" == slurmctld ]]; then
    mapfile -t jobs < <(timeout 10 squeue -h -o %i 2>/dev/null)
    if ((${#jobs[@]})); then
        printf 'cluster-down: cancelling %s job(s)\n' "${#jobs[@]}"
        timeout 10 scancel "${jobs[@]}" 2>/dev/null
        for ((i = 0; i < 50; i++)); do
            [[ -z "$(timeout 10 squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ]] && break
            sleep 0.2
        done
    fi
fi

# slurmctld reports to slurmdbd, which writes to MariaDB; all of them authenticate with munge.
stop "slurmd:$SCRATCH/run/slurmd.pid" "slurmctld:$SCRATCH/run/slurmctld.pid"
stop "slurmdbd:$SCRATCH/run/slurmdbd.pid"
stop mariadbd:/run/mysqld/mysqld.pid munged:/run/munge/munged.pid

awk -v t0="$T_START" -v t1="$(date +%s.%N)" \
    'BEGIN { printf "cluster-down: done in %.1f s\n", t1 - t0 }'
exit "$status"
