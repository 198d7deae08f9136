#!/usr/bin/env bash
# The test harness's Kafka-protocol broker, usable by hand:
#   tests/broker.sh start   starts a broker on a free 127.0.0.1 port, prints BOOTSTRAP=127.0.0.1:PORT
#   tests/broker.sh stop    stops it
#   tests/broker.sh status  prints BOOTSTRAP=... if it is running
#
# SLUICE_BROKER picks the broker: `noida` (default; noida-db from PyPI, installed by
# tests/prereqs.sh, which passes every exactly-once check), or `external` with
# SLUICE_TEST_BOOTSTRAP=host:port for a broker you run yourself (e.g. Apache Kafka).
set -euo pipefail

SLUICE_CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
SLUICE_VENV=${SLUICE_VENV:-$SLUICE_CACHE/venv}
BROKER_DIR=${SLUICE_BROKER_DIR:-$SLUICE_CACHE/broker}
BROKER=${SLUICE_BROKER:-noida}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() {
  local port=$1
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

start() {
  if [ "$BROKER" = external ]; then
    : "${SLUICE_TEST_BOOTSTRAP:?SLUICE_BROKER=external needs SLUICE_TEST_BOOTSTRAP=host:port}"
    echo "BOOTSTRAP=$SLUICE_TEST_BOOTSTRAP"
    return
  fi
  if status >/dev/null 2>&1; then
    status
    return
  fi
  local noida="$SLUICE_VENV/bin/noida-db"
  [ -x "$noida" ] || { echo "broker.sh: $noida is missing; run tests/prereqs.sh" >&2; exit 1; }
  local port data
  port=$(free_port)
  data=$(mktemp -d "${TMPDIR:-/tmp}/sluice-broker.XXXXXX")
  mkdir -p "$BROKER_DIR"
  # noida-db prints a harmless GLIBC_2.39 warning on Debian 12; its log keeps it.
  setsid "$noida" start --only kafka --host 127.0.0.1 --kafka-port "$port" --data-dir "$data" \
    >"$BROKER_DIR/broker.log" 2>&1 < /dev/null &
  echo $! >"$BROKER_DIR/pid"
  echo "$port" >"$BROKER_DIR/port"
  echo "$data" >"$BROKER_DIR/data"
  if ! wait_for_port "$port"; then
    echo "broker.sh: the broker did not open port $port; log:" >&2
    cat "$BROKER_DIR/broker.log" >&2
    stop
    exit 1
  fi
  echo "BOOTSTRAP=127.0.0.1:$port"
}

status() {
  if [ "$BROKER" = external ]; then
    echo "BOOTSTRAP=${SLUICE_TEST_BOOTSTRAP:-}"
    return
  fi
  [ -f "$BROKER_DIR/pid" ] && kill -0 "$(cat "$BROKER_DIR/pid")" 2>/dev/null || return 1
  echo "BOOTSTRAP=127.0.0.1:$(cat "$BROKER_DIR/port")"
}

stop() {
  [ "$BROKER" = external ] && return
  if [ -f "$BROKER_DIR/pid" ]; then
    local pid
    pid=$(cat "$BROKER_DIR/pid")
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- "-$pid" 2>/dev/null || true
    rm -f "$BROKER_DIR/pid"
  fi
  if [ -f "$BROKER_DIR/data" ]; then
    rm -rf "$(cat "$BROKER_DIR/data")" "$BROKER_DIR/data"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: tests/broker.sh start|stop|status" >&2; exit 2 ;;
esac
