#!/usr/bin/env bash
# Stop the SLURM that .ci/slurm/start.sh started: its jobs first (through SLURM, so job steps end
# cleanly), then exactly the daemons whose PIDs it recorded, in reverse start order.
#
#   bash .ci/slurm/stop.sh          state, accounting DB and logs stay: the next start resumes job ids
#   bash .ci/slurm/stop.sh --purge  ... and the runtime dir is deleted (job ids restart at 1: never
#                                   reuse a submitit folder across a purge, its old results would match)
set -uo pipefail
RUN=${VLM_RESAMPLER_SLURM_DIR:-/tmp/vlm_resampler-slurm}
PURGE=0
[ "${1:-}" = --purge ] && PURGE=1
START_NS=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - START_NS) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
say() { echo "[slurm stop +$(elapsed)s] $*"; }

alive() {  # NAME: the recorded PID is a live (not zombie) process whose command is NAME
  local file=$RUN/pids/$1.pid pid
  [ -s "$file" ] || return 1
  pid=$(cat "$file")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
halt() {  # NAME: SIGTERM, SIGKILL after 10 s
  if alive "$1"; then
    local pid; pid=$(cat "$RUN/pids/$1.pid")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do alive "$1" || break; sleep 0.1; done
    if alive "$1"; then say "$1 (pid $pid) ignored SIGTERM for 10 s: SIGKILL"; kill -KILL "$pid"; fi
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$RUN/pids/$1.pid"
}

if alive slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
  halt "$daemon"
done
if [ "$PURGE" = 1 ]; then
  rm -rf "$RUN"
  say "removed $RUN"
fi
exit 0
