#!/usr/bin/env bash
# A Ray cluster of several nodes on one machine, all on loopback: a head and N workers, each
# its own raylet with its own custom resource (node_head, node_w1, ...; each worker also has one
# unit of `worker`, for keeping engines off the head), so that `distill
# submit`, multi-node placement and a lost worker can be tried without a cloud.
#
#   cluster/local.sh start [WORKERS]   # head + WORKERS workers (default 1); prints the address
#   cluster/local.sh status            # which nodes run, and Ray's view of the cluster
#   cluster/local.sh stop              # ends this cluster's processes, and nothing else
#   cluster/local.sh stop-node NAME    # kills one worker node (w1, w2, ...) as a lost machine
#
# Settings (environment): DISTILL_LOCAL_RAY_DIR (pid files, logs, each node's Ray temp dir;
# /tmp/distill-local-ray), DISTILL_LOCAL_RAY_PORT (GCS, 6390; the Ray client takes the next),
# DISTILL_LOCAL_RAY_DASHBOARD_PORT (dashboard and Jobs API, 8275; node agents take +100, +101...),
# DISTILL_LOCAL_RAY_HEAD_CPUS / _WORKER_CPUS (logical CPUs, 1 each), DISTILL_LOCAL_RAY_OBJECT_STORE_MB
# (per node, 300), DISTILL_LOCAL_RAY_IP (127.0.0.2), DISTILL_LOCAL_RAY_BIN (where ray is).
# The ports are not Ray's defaults (6379, 8265), so this cluster runs beside another program's
# `ray.init()`. The address is 127.0.0.2, a loopback address like 127.0.0.1: Ray swaps 127.0.0.1
# itself for the machine's network address, and this cluster is meant to stay on loopback.
#
# Each node is `ray start --block` in its own session: its process group holds that node's
# Ray processes, so `stop` signals those groups by id. `ray stop` is not used: it ends every
# Ray process of the machine, other people's clusters included.
set -euo pipefail

DIR=${DISTILL_LOCAL_RAY_DIR:-/tmp/distill-local-ray}
PORT=${DISTILL_LOCAL_RAY_PORT:-6390}
DASHBOARD_PORT=${DISTILL_LOCAL_RAY_DASHBOARD_PORT:-8275}
HEAD_CPUS=${DISTILL_LOCAL_RAY_HEAD_CPUS:-1}
WORKER_CPUS=${DISTILL_LOCAL_RAY_WORKER_CPUS:-1}
OBJECT_STORE_MB=${DISTILL_LOCAL_RAY_OBJECT_STORE_MB:-300}
IP=${DISTILL_LOCAL_RAY_IP:-127.0.0.2}
GCS="$IP:$PORT"
JOBS="http://$IP:$DASHBOARD_PORT"

# The ray and python of the environment distill is installed in: $DISTILL_LOCAL_RAY_BIN, else the
# active virtualenv, else this repository's .venv, else whatever is on PATH. Jobs run
# `python -m distill.cli`, so the nodes put that python first on PATH too.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${DISTILL_LOCAL_RAY_BIN:-}" ]; then BIN=$DISTILL_LOCAL_RAY_BIN
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/ray" ]; then BIN="$VIRTUAL_ENV/bin"
elif [ -x "$ROOT/.venv/bin/ray" ]; then BIN="$ROOT/.venv/bin"
elif command -v ray >/dev/null; then BIN=$(dirname "$(command -v ray)")
else echo "local.sh: no ray found; install distill first (make install), or set DISTILL_LOCAL_RAY_BIN" >&2; exit 1
fi
RAY="$BIN/ray"
export PATH="$BIN:$PATH"
export RAY_USAGE_STATS_ENABLED=0  # nothing leaves the machine
# Token authentication, said explicitly: `ray start` turns it on by itself when a token file
# exists, but Ray's other tools only when told, and then cannot talk to their own cluster.
# The token is ~/.ray/auth_token (made by `start` if missing) or $RAY_AUTH_TOKEN; `distill
# submit` finds it the same way. RAY_AUTH_MODE=disabled before `start` turns it off.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

alive() { kill -0 -- "-$1" 2>/dev/null; }  # is anything left in process group $1?

node_pids() { ls "$DIR"/*.pid 2>/dev/null | sort -r; }  # workers (w*) before the head

start_node() {  # name, then ray start arguments
  local name=$1; shift
  # setsid: the node gets its own session and process group, whose id is the pid written here.
  # A temp dir per node: nodes sharing one would unpack a job's files into the same folder, and
  # one node's agent would replace the folder another node's job is working in.
  setsid "$RAY" start --block --node-ip-address "$IP" --temp-dir "$DIR/$name" \
    --object-store-memory $((OBJECT_STORE_MB * 1024 * 1024)) --disable-usage-stats "$@" \
    >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

active_nodes() {  # how many nodes the GCS sees alive (0 when it cannot be reached)
  "$RAY" status --address "$GCS" 2>/dev/null | awk '/^Active:/{a=1; next} /^(Idle|Pending):/{a=0} a && /node_/{n++} END{print n+0}'
}

wait_for() {  # seconds, what, command...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq "$seconds"); do
    if "$@"; then return 0; fi
    sleep 1
  done
  echo "local.sh: $what did not happen within ${seconds}s; logs: $DIR/*.log" >&2
  return 1
}

nodes_up() { [ "$(active_nodes)" -ge "$1" ]; }

jobs_api_up() {  # any HTTP answer counts: with token authentication it may be a 401
  "$BIN/python" - "$JOBS/api/version" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
PY
}

start() {
  local workers=${1:-1}
  if [ -n "$(node_pids)" ]; then
    echo "local.sh: a local cluster is already recorded in $DIR; run '$0 stop' first" >&2
    exit 1
  fi
  mkdir -p "$DIR"
  if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    "$RAY" get-auth-token --generate >/dev/null  # makes ~/.ray/auth_token only if there is none
  fi
  start_node head --head --port "$PORT" --num-cpus "$HEAD_CPUS" --resources '{"node_head": 1}' \
    --include-dashboard true --dashboard-host "$IP" --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port $((PORT + 1)) --dashboard-agent-listen-port $((DASHBOARD_PORT + 100))
  wait_for 90 "the head node starting" nodes_up 1 || { stop; exit 1; }
  for i in $(seq "$workers"); do
    # Each node's dashboard agent needs a port of its own: all of them share one machine.
    start_node "w$i" --address "$GCS" --num-cpus "$WORKER_CPUS" --resources "{\"node_w$i\": 1, \"worker\": 1}" \
      --dashboard-agent-listen-port $((DASHBOARD_PORT + 100 + i))
  done
  wait_for 90 "$((workers + 1)) nodes joining" nodes_up $((workers + 1)) || { stop; exit 1; }
  wait_for 60 "the Jobs API answering at $JOBS" jobs_api_up || { stop; exit 1; }
  echo "local Ray cluster: head + $workers worker(s) on $IP"
  echo "  jobs:    export RAY_ADDRESS=$JOBS     # distill submit | status | logs | stop"
  echo "  drivers: ray.init(address=\"$GCS\")  # recipe cluster.address, for distill run"
  echo "  stop:    $0 stop"
}

stop_node() {  # the node's pid file
  local pidfile=$1 pgid
  pgid=$(cat "$pidfile")
  if alive "$pgid"; then
    # SIGTERM to `ray start` alone: it drains its node through the GCS (still up, as the
    # head goes last) and ends its processes. Whatever is left after 15 s is killed: Ray
    # may wait out its whole 30 s drain timeout, and nothing here needs a graceful drain.
    kill -TERM "$pgid" 2>/dev/null || true
    for _ in $(seq 30); do alive "$pgid" || break; sleep 0.5; done
    if alive "$pgid"; then
      kill -KILL -- "-$pgid" 2>/dev/null || true
      for _ in $(seq 20); do alive "$pgid" || break; sleep 0.5; done
      if alive "$pgid"; then echo "local.sh: process group $pgid ($pidfile) is still alive" >&2; fi
    fi
  fi
  rm -f "$pidfile"
}

stop() {
  local pidfile
  for pidfile in $(node_pids); do stop_node "$pidfile"; done
  # A job's driver runs in a session of its own, and Ray's watcher ends it once its job
  # supervisor is gone; give it that moment.
  sleep 1
  echo "local Ray cluster stopped (state and logs kept in $DIR)"
}

status() {
  local pidfile any=0
  for pidfile in $(node_pids); do
    any=1
    local name; name=$(basename "$pidfile" .pid)
    if alive "$(cat "$pidfile")"; then echo "$name: running (process group $(cat "$pidfile"))"; else echo "$name: not running"; fi
  done
  if [ "$any" = 0 ]; then echo "no local cluster recorded in $DIR; start one: $0 start [WORKERS]"; return 0; fi
  "$RAY" status --address "$GCS" || true
  echo "jobs: RAY_ADDRESS=$JOBS"
}

lose_node() {  # a worker's name: it goes as a lost spot node would, while the rest runs on
  local name=${1:-}
  case "$name" in
    w[0-9]*) ;;
    *) echo "local.sh: stop-node takes a worker's name (w1, w2, ...), not '$name'; 'stop' ends the whole cluster" >&2; exit 2 ;;
  esac
  if [ ! -f "$DIR/$name.pid" ]; then
    echo "local.sh: no node $name recorded in $DIR; running: $(cd "$DIR" 2>/dev/null && ls *.pid 2>/dev/null | sed 's/.pid//' | tr '\n' ' ')" >&2
    exit 1
  fi
  # SIGKILL to every process of the node at once, no drain: the node is gone as a lost machine
  # is, and the head learns it only when the node's heartbeats stop.
  local pgid; pgid=$(cat "$DIR/$name.pid")
  kill -KILL -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 20); do alive "$pgid" || break; sleep 0.5; done
  if alive "$pgid"; then echo "local.sh: process group $pgid of $name is still alive" >&2; exit 1; fi
  rm -f "$DIR/$name.pid"
  echo "node $name stopped (killed, as a lost machine)"
}

case "${1:-}" in
  start) start "${2:-1}" ;;
  stop) stop ;;
  stop-node) lose_node "${2:-}" ;;
  status) status ;;
  *) echo "usage: $0 start [WORKERS] | stop | stop-node NAME | status" >&2; exit 2 ;;
esac
