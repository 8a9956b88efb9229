#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the sweep tests (tests marked `slurm`) and CI.
#
#   bash .ci/slurm/start.sh     install what is missing (apt, idempotent), start the daemons that
#                               are not running, run one job; prints the seconds from start to
#                               that first job running
#   bash .ci/slurm/stop.sh      cancel the jobs, stop exactly the daemons this script started
#
# Daemons, in start order: munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd. All of them
# listen on 127.0.0.1 or on unix sockets (slurmdbd 22.05 has no bind option: 0.0.0.0:6819, and
# its only client is slurmctld on 127.0.0.1). There is no systemd here: each daemon is started by
# hand in the foreground mode (-D / -F), backgrounded, and its PID recorded in $RUN/pids.
#
# Accounting (slurmdbd + MariaDB) is not optional: submitit reads job states only through
# `sacct`; without it a cancelled or killed job leaves `job.result()` waiting forever.
#
# Knobs (environment):
#   VLM_RESAMPLER_SLURM_DIR   runtime dir: state, logs, PIDs, MariaDB datadir [/tmp/vlm_resampler-slurm]
#   SLURM_NODE_CPUS           CPUs the node advertises; more than nproc oversubscribes, so a
#                             4-job test sweep runs at once on 2 cores       [max(nproc, 4)]
#   SLURM_CRED_EXPIRE         seconds a requeued job is held before it may start again (SLURM's
#                             default 120 s makes requeue tests take minutes) [10]
set -euo pipefail

RUN=${VLM_RESAMPLER_SLURM_DIR:-/tmp/vlm_resampler-slurm}
NPROC=$(nproc)
CPUS=${SLURM_NODE_CPUS:-$(( NPROC > 4 ? NPROC : 4 ))}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}
CLUSTER=vlmresampler
PARTITION=debug
SOCK_DIR=$RUN/mysqld
MYSQL_SOCK=$SOCK_DIR/mysqld.sock
START_NS=$(date +%s%N)

elapsed() { local ms=$(( ($(date +%s%N) - START_NS) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
say() { echo "[slurm start +$(elapsed)s] $*"; }
fail() { echo "[slurm start] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (the daemons and /etc/slurm need it)"

# ---------------------------------------------------------------------------------------------
# PIDs: a recorded PID counts only while it is that daemon and not a zombie (daemons started
# here are reparented to PID 1, which reaps them late: `kill -0` would still say "alive").
alive() {  # NAME: the PID in $RUN/pids/NAME.pid is a live process whose command is NAME
  local file=$RUN/pids/$1.pid pid
  [ -s "$file" ] || return 1
  pid=$(cat "$file")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
started() {  # NAME: the PID just recorded in $RUN/pids/NAME.pid still runs. Not `alive`: right
  # after `launch` the process may still be the wrapper (setpriv, nohup) before its exec, with
  # another /proc/PID/comm (seen under `nice -n 19`: munged "did not start" while it was starting).
  local pid; pid=$(cat "$RUN/pids/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
poll() {  # SECONDS NAME CMD...: run CMD every 0.2 s until it succeeds; give up early if NAME died
  local tries=$(( $1 * 5 )) name=$2; shift 2
  for _ in $(seq "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    [ "$name" = - ] || started "$name" || return 1
    sleep 0.2
  done
  return 1
}
launch() {  # NAME CMD...: start a daemon in the background, record its PID
  local name=$1; shift
  nohup "$@" </dev/null >"$RUN/log/$name.out" 2>&1 &
  echo $! >"$RUN/pids/$name.pid"
}
halt() {  # NAME: SIGTERM the recorded PID, SIGKILL after 15 s
  alive "$1" || { rm -f "$RUN/pids/$1.pid"; return 0; }
  local pid; pid=$(cat "$RUN/pids/$1.pid")
  kill -TERM "$pid"
  for _ in $(seq 150); do alive "$1" || break; sleep 0.1; done
  alive "$1" && kill -KILL "$pid"
  rm -f "$RUN/pids/$1.pid"
}

# A SLURM that this script did not start (another checkout's, a real cluster's client setup) is
# used as it is: its configuration is not ours to rewrite.
if ! alive slurmctld && command -v scontrol >/dev/null && timeout 5 scontrol ping >/dev/null 2>&1; then
  sacct -n -X -S now >/dev/null 2>&1 || fail "a SLURM not started by this script is running, but without accounting (sacct fails); submitit needs sacct"
  say "a SLURM not started by this script is already running; using it: $(sinfo -h -o '%P %a %D %T' | tr '\n' ' ')"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Packages (Debian 12: slurm 22.05, munge, MariaDB). Without recommends: slurm-wlm pulls 43.
packages=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  # The packages' init scripts must not start daemons of their own (a second munged/mariadbd).
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
  say "packages installed"
fi

mkdir -p "$RUN"/{pids,log,state,spool}

# ---------------------------------------------------------------------------------------------
# munge: the key is made by the package's postinst; make one if it is not there.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  head -c 128 /dev/urandom >/etc/munge/munge.key
fi
chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge && chmod 755 /run/munge
if ! alive munged; then
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  # setpriv execs munged itself, so $! is munged's PID (runuser would leave its own PID there).
  launch munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
  poll 10 munged bash -c 'munge -n | unmunge' || fail "munged did not start (see $RUN/log/munged.out)"
  say "munged up"
fi

# ---------------------------------------------------------------------------------------------
# Configuration. Rewritten on every start; a change restarts slurmctld and slurmd below.
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
new_conf=$(mktemp)
cat >"$new_conf" <<EOF
# Written by .ci/slurm/start.sh (vlm_resampler): a single-node SLURM for tests.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# slurmctld and slurmd listen on 127.0.0.1 only.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# The node may advertise more CPUs than the machine has.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=300
# A requeued job waits cred_expire + 1 s before it may start again; the scheduler looks every 5 s.
AuthInfo=cred_expire=$CRED_EXPIRE
SchedulerParameters=sched_interval=5,bf_interval=5
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
StateSaveLocation=$RUN/state
SlurmdSpoolDir=$RUN/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$RUN/log/slurmctld.log
SlurmdLogFile=$RUN/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
mkdir -p /etc/slurm
conf_changed=0
if ! cmp -s "$new_conf" /etc/slurm/slurm.conf; then
  install -m 644 "$new_conf" /etc/slurm/slurm.conf
  conf_changed=1
fi
rm -f "$new_conf"
touch /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf
cat >/etc/slurm/slurmdbd.conf <<EOF
# Written by .ci/slurm/start.sh (vlm_resampler).
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$RUN/log/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF

# ---------------------------------------------------------------------------------------------
# MariaDB: our own datadir, unix socket only (no TCP port); root logs in by socket auth.
if [ ! -d "$RUN/mysql/mysql" ]; then
  rm -rf "$RUN/mysql" && mkdir -p "$RUN/mysql" && chown mysql:mysql "$RUN/mysql"
  mariadb-install-db --no-defaults --user=mysql --datadir="$RUN/mysql" --auth-root-authentication-method=socket \
    --skip-test-db --innodb-log-file-size=64M >"$RUN/log/mariadb-install.log" 2>&1 ||
    fail "mariadb-install-db failed (see $RUN/log/mariadb-install.log)"
  say "MariaDB datadir initialised"
fi
if ! alive mariadbd; then
  # The socket's folder must belong to mysql (a root-owned one: "Bind on unix socket: Permission denied").
  mkdir -p "$SOCK_DIR" && chown mysql:mysql "$SOCK_DIR" && rm -f "$MYSQL_SOCK"
  launch mariadbd /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$RUN/mysql" --socket="$MYSQL_SOCK" \
    --pid-file="$SOCK_DIR/mysqld.pid" --skip-networking --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
    --performance-schema=OFF --innodb-flush-log-at-trx-commit=0 --innodb-lock-wait-timeout=900
  poll 30 mariadbd mariadb --no-defaults -uroot --socket="$MYSQL_SOCK" -e 'select 1' ||
    fail "mariadbd did not start (see $RUN/log/mariadbd.out)"
  say "mariadbd up"
fi
if ! alive slurmdbd; then
  # libmariadb takes the socket of StorageHost=localhost from MYSQL_UNIX_PORT.
  MYSQL_UNIX_PORT=$MYSQL_SOCK launch slurmdbd /usr/sbin/slurmdbd -D
  poll 30 slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' || fail "slurmdbd did not start (see $RUN/log/slurmdbd.log)"
  say "slurmdbd up"
fi

# ---------------------------------------------------------------------------------------------
# slurmctld + slurmd. A changed slurm.conf (e.g. the node's CPUs) needs both restarted.
if [ "$conf_changed" = 1 ] && { alive slurmctld || alive slurmd; }; then
  say "slurm.conf changed: restarting slurmctld and slurmd"
  halt slurmd
  halt slurmctld
fi
if ! alive slurmctld; then
  launch slurmctld /usr/sbin/slurmctld -D
  poll 30 slurmctld scontrol ping || fail "slurmctld did not start (see $RUN/log/slurmctld.log)"
  say "slurmctld up"
fi
if ! alive slurmd; then
  # -N: the node is called localhost in slurm.conf, whatever this machine's hostname is.
  launch slurmd /usr/sbin/slurmd -D -N localhost
fi
node_ready() { sinfo -h -n localhost -o '%T' | grep -Eq '^(idle|mixed|allocated)'; }
poll 60 slurmd node_ready || { sinfo -N -l || true; fail "the node did not become ready (see $RUN/log/slurmd.log)"; }
# slurmctld registers the cluster with slurmdbd by itself; sacct answers once it has.
poll 30 - bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx $CLUSTER" ||
  fail "cluster $CLUSTER is not registered with slurmdbd (see $RUN/log/slurmdbd.log)"

# ---------------------------------------------------------------------------------------------
# The first job: proof that submission, scheduling and accounting all work.
timeout 60 srun -N1 -n1 -t 1 -J vlm-resampler-slurm-check true || fail "the check job did not run (see $RUN/log/slurmd.log)"
say "first job ran $(elapsed) s after start; SLURM ready: partition $PARTITION, $CPUS CPUs, ${mem_mb} MB, logs in $RUN/log"
