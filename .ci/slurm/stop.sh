#!/usr/bin/env bash
# Stop the cluster that .ci/slurm/start.sh STATE_DIR started: cancel its jobs, then end
# slurmd, slurmctld and munged by the PIDs recorded in STATE_DIR (nothing else is killed).
#
#   .ci/slurm/stop.sh STATE_DIR
set -uo pipefail

state=${1:?usage: stop.sh STATE_DIR}
[ -d "$state" ] || exit 0
state=$(cd "$state" && pwd)
conf_dir=${COVIDMTL_SLURM_CONF_DIR:-/etc/slurm}
lock="$conf_dir/covidmtl-cluster.state"

# Cancel jobs only when the configured cluster is the one of STATE_DIR.
if [ -s "$lock" ] && [ "$(cat "$lock")" = "$state" ]; then
    SLURM_CONF="$conf_dir/slurm.conf" timeout 20 scancel --user="$(id -un)" >/dev/null 2>&1 || true
fi

stop_pid_file() {
    local pid_file=$1 pid
    [ -s "$pid_file" ] || return 0
    pid=$(cat "$pid_file")
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 20); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop_pid_file "$state/run/slurmd.pid"
stop_pid_file "$state/run/slurmctld.pid"
stop_pid_file "$state/run/munged.pid"
if [ -s "$lock" ] && [ "$(cat "$lock")" = "$state" ]; then
    rm -f "$lock"
fi
exit 0
