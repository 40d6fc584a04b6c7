#!/usr/bin/env bash
# Rolling-restart drill (DEPLOYMENT.md, "Stopping and rolling restarts"; BENCHMARKS.md,
# 2026-12-08, a twenty-fourth machine). Two instances of BIN on one PostgreSQL schema take the
# outage drill's load (outage_drill.py: creates, group adds and PATCHes through both, retrying
# refused connections as an identity provider would); every few seconds one instance gets
# SIGTERM and is started again, four times in all. The drill then checks that every
# acknowledged user is stored once, is in the group and is PATCHed.
#
# Usage: tests/manual/rolling_restart.sh BIN [USERS]
# Needs psql and PostgreSQL on 127.0.0.1:5432 (database `test`); uses ports 18091 and 18092
# and the schema `rolling_drill`, which it drops at the end.
set -euo pipefail
BIN=$1
USERS=${2:-3000}
TOKEN=drilltoken-0123456789abcdef0123456789
SCHEMA=rolling_drill
URL="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$SCHEMA"
LOGS=$(mktemp -d)
HERE=$(cd "$(dirname "$0")" && pwd)
declare -A PIDS

psql -q -h 127.0.0.1 -U postgres test -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE; CREATE SCHEMA $SCHEMA" 2>/dev/null
start() {
  SCIM_DATABASE_URL="$URL" SCIM_LISTEN="127.0.0.1:$1" SCIM_BOOTSTRAP_TOKEN=$TOKEN RUST_LOG=info \
    "$BIN" serve >>"$LOGS/$1.log" 2>&1 &
  PIDS[$1]=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "instance $1 did not start" >&2
  exit 1
}
start 18091
start 18092

SCIM_BENCH_TOKEN=$TOKEN python3 "$HERE/outage_drill.py" 18091,18092 "$USERS" >"$LOGS/drill.out" 2>&1 &
drill=$!
for port in 18091 18092 18091 18092; do
  sleep 4
  t0=$(date +%s%N)
  kill -TERM "${PIDS[$port]}"
  rc=0
  wait "${PIDS[$port]}" || rc=$?
  echo "instance $port: SIGTERM, exited with $rc after $((($(date +%s%N) - t0) / 1000000)) ms"
  sleep 1
  start "$port"
done
rc=0
wait $drill || rc=$?
cat "$LOGS/drill.out"
kill -TERM "${PIDS[18091]}" "${PIDS[18092]}"
wait
psql -q -h 127.0.0.1 -U postgres test -c "DROP SCHEMA $SCHEMA CASCADE" 2>/dev/null
echo "logs in $LOGS"
exit $rc
