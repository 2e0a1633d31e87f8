# Sourced by the benchmark scripts and tests/players/run.sh: the process bookkeeping and the port
# and readiness helpers each of them needs. Processes a script starts go in PIDS and are stopped
# by PID only (nothing here kills by name), on any exit, Ctrl-C included.
#
#   source "$ROOT/benches/lib.sh"
#   some_server --listen 127.0.0.1:"$(free_port)" & PIDS+=($!)
#   ON_EXIT+=('rm -rf "$WORK"')     # more cleanup, run after the processes have stopped
#   wait_http "http://127.0.0.1:$PORT/" || exit 1

PIDS=()
ON_EXIT=()

# TERM to every process started, then wait for each; then the script's own cleanup.
stop_started() {
  local p c
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  for c in "${ON_EXIT[@]}"; do eval "$c"; done
  ON_EXIT=()
}
trap stop_started EXIT
trap 'exit 130' INT TERM

# stop_pid PID: TERM, then wait for it (one process, before the script ends).
stop_pid() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL [CURL_ARG...]: up to 10 s for any HTTP answer from URL (a listener is up).
wait_http() {
  local _
  for _ in $(seq 1 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${@:2}" "$1") != 000 ]] && return 0
    sleep 0.1
  done
  echo "ERROR: $1 did not come up" >&2
  return 1
}
