#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine: munged, slurmctld and slurmd, with two
# fake GPUs that the scheduler can grant. For CI and tests/test_slurm.py; needs root and
# Debian's slurm-wlm + munge packages (.ci/run installs them).
#
#   .ci/slurm/start.sh STATE_DIR      # prints the node name when the node is idle
#   .ci/slurm/stop.sh STATE_DIR
#
# The configuration goes to /etc/slurm (slurm.conf, gres.conf): the Snakemake job-step
# executor removes SLURM_CONF from the environment of the `srun` it runs inside each job,
# so only the default location works. An existing slurm.conf that this script did not
# write is never overwritten (exit 3). Daemon state, logs and PID files live in STATE_DIR.
set -euo pipefail

MARKER="# written by covidmtl .ci/slurm/start.sh"
state=${1:?usage: start.sh STATE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
conf_dir=${COVIDMTL_SLURM_CONF_DIR:-/etc/slurm}
conf="$conf_dir/slurm.conf"
timeout_s=${COVIDMTL_SLURM_START_TIMEOUT:-60}

die() { echo "start.sh: $1" >&2; exit "${2:-1}"; }

[ "$(id -u)" -eq 0 ] || die "needs root (slurmd and munged run as root here)" 2
for tool in munged slurmctld slurmd sinfo scontrol; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install slurm-wlm munge" 2
done
if [ -e "$conf" ] && ! grep -qF "$MARKER" "$conf"; then
    die "$conf exists and was not written by this script; refusing to overwrite it" 3
fi
# One cluster per machine (one /etc/slurm): refuse while another one started here runs.
lock="$conf_dir/covidmtl-cluster.state"
if [ -s "$lock" ]; then
    other=$(cat "$lock")
    if [ -s "$other/run/slurmctld.pid" ] && kill -0 "$(cat "$other/run/slurmctld.pid")" 2>/dev/null; then
        die "a cluster started by this script is running (state: $other); stop it first: .ci/slurm/stop.sh $other" 3
    fi
fi

mkdir -p "$state"
state=$(cd "$state" && pwd)
mkdir -p "$state"/{spool/ctld,spool/d,log,run,munge} "$conf_dir"
chmod 755 "$state/munge"   # munged wants its socket folder searchable, not writable, by others

host=$(hostname -s)
free_port() {
    "${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Fake GPU device files (the null device): enough for SLURM to schedule and to set
# CUDA_VISIBLE_DEVICES; nothing opens them.
for i in 0 1; do
    [ -e "/dev/fakegpu$i" ] || mknod "/dev/fakegpu$i" c 1 3
done

sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" \
    -e "s|@CTLD_PORT@|$(free_port)|g" -e "s|@SLURMD_PORT@|$(free_port)|g" \
    -e "s|@CPUS@|${COVIDMTL_SLURM_CPUS:-16}|g" -e "s|@MEM_MB@|${COVIDMTL_SLURM_MEM_MB:-64000}|g" \
    "$here/slurm.conf.in" | { echo "$MARKER"; cat; } > "$conf"
{ echo "$MARKER"; echo "NodeName=$host Name=gpu File=/dev/fakegpu[0-1]"; } > "$conf_dir/gres.conf"

# munged with its own socket, key copy and PID file, so a system munged is left alone.
key="$state/munge/munge.key"
if [ -r /etc/munge/munge.key ]; then
    cp /etc/munge/munge.key "$key"
else
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
fi
chmod 400 "$key"
munged --force --socket="$state/munge/munge.socket.2" --key-file="$key" \
    --pid-file="$state/run/munged.pid" --log-file="$state/log/munged.log" \
    --seed-file="$state/munge/munged.seed"

echo "$state" > "$lock"
slurmctld -f "$conf" -i
slurmd -f "$conf"

# Wait until the node is idle (it starts "unknown", then registers). Client commands
# block for a while when slurmctld is down, hence the wall-clock deadline and the
# liveness checks of the daemons.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
deadline=$((SECONDS + timeout_s))
node_state=none
while [ "$SECONDS" -lt "$deadline" ]; do
    for daemon in slurmctld slurmd; do
        if ! alive "$state/run/$daemon.pid"; then
            sleep 1
            alive "$state/run/$daemon.pid" || { node_state="$daemon died"; break 2; }
        fi
    done
    node_state=$(timeout 5 sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n1 || true)
    case "$node_state" in
        idle*) echo "$host"; exit 0 ;;
        down*|drain*) timeout 5 scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
echo "start.sh: node $host not idle after ${timeout_s}s (state: ${node_state:-none}); logs:" >&2
tail -n 30 "$state"/log/*.log >&2 || true
exit 1
