# Shared by benches/compare.sh and benches/hitratio.sh (sourced, not run): checks before a run,
# stopping what a run started, and waiting for a server to answer.

# Exits unless every tool in "$@" is installed; $HINT says how to get them.
require_tools() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (${HINT:-install it})" >&2; exit 1; }
  done
  [ -x "$BIN" ] || { echo "no release binary at $BIN: run cargo build --release" >&2; exit 1; }
}

# Exits if a port in "$@" already answers on loopback (a run still going, or its leftovers).
require_free_ports() {
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port is in use (another run still going?): set BASE_PORT" >&2; exit 1
    fi
  done
}

# Servers started in the background add their pid to PIDS; all are stopped on exit, and the
# nginx cache directory $NGINX_CACHE is removed.
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$NGINX_CACHE" "$NGINX_CACHE-log"
}
trap cleanup EXIT

# Waits until a URL answers (any status), for up to 10 s.
wait_for() {
  for _ in $(seq 100); do curl -sk -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "not answering: $1" >&2; exit 1
}
