#!/usr/bin/env bash
# An S3-protocol server on loopback for Tier 2 (`make bench.certification`): moto's server from
# PyPI, installed into a virtualenv under target/ on first use.
#
#   benches/s3-server.sh start PORT BUCKET   install if needed, start, wait, create the bucket
#   benches/s3-server.sh stop                stop the server started here
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/moto-venv
PIDFILE=target/moto-server.pid
MOTO_VERSION=5.2.5

case "${1:-}" in
start)
  port=${2:?port}
  bucket=${3:?bucket}
  if [ ! -x "$VENV/bin/moto_server" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
  fi
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill "$(cat "$PIDFILE")" || true
  fi
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >target/moto-server.log 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1; then
      break
    fi
    sleep 0.1
  done
  curl -sf -X PUT "http://127.0.0.1:$port/$bucket" >/dev/null
  echo "moto S3 server on http://127.0.0.1:$port (bucket $bucket, pid $(cat "$PIDFILE"))"
  ;;
stop)
  if [ -f "$PIDFILE" ]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
  ;;
*)
  echo "usage: $0 start PORT BUCKET | stop" >&2
  exit 2
  ;;
esac
