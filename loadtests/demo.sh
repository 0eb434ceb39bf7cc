#!/usr/bin/env bash
# `make demo`: the whole job on a fresh machine, in a few minutes on 2 cores.
#
#   1. a fresh phiserve home: dev KEK, dev token keys, the example models built and encrypted
#   2. `phiserve serve` in the background on a free port (stopped on exit, even on failure)
#   3. a dev token, then a short bounded load test (closed loop, both models, JSON and binary)
#   4. the report under reports/loadtest/<time>-demo/, and its p95/p99 table printed here
#
# Settings: DEMO_DURATION (s, default 25), DEMO_USERS (default 4), DEMO_HOME (a home to use
# instead of a temporary one; kept afterwards), SLO_FILE (default loadtests/slo.example.yaml),
# REPORT_DIR. Exit status: the gate's (0 passed, 3 missed) or non-zero when a step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
DURATION=${DEMO_DURATION:-25}
USERS=${DEMO_USERS:-4}
SLO_FILE=${SLO_FILE-loadtests/slo.example.yaml}
REPORT_DIR=${REPORT_DIR:-reports/loadtest/$(date -u +%Y%m%dT%H%M%SZ)-demo}
READY_TIMEOUT=${DEMO_READY_TIMEOUT:-300}

say() { printf '\n==> %s\n' "$*"; }

if [[ -n "${DEMO_HOME:-}" ]]; then
    home=$DEMO_HOME
    keep_home=1
    mkdir -p "$home"
else
    home=$(mktemp -d "${TMPDIR:-/tmp}/phiserve-demo.XXXXXX")
    keep_home=0
fi
server_pid=""

stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        say "stopping the server"
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.2
        done
        # Still there after 20 s: take the whole process group down.
        kill -KILL -- "-$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}

cleanup() {
    local status=$?
    stop_server
    if [[ "$keep_home" == 0 ]]; then
        rm -rf "$home"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Only this script's settings: a PHISERVE_* variable from the caller's shell must not leak in.
for var in $(compgen -e | grep '^PHISERVE_' || true); do unset "$var"; done
export PHISERVE_HOME=$home BENTOML_DO_NOT_TRACK=true

say "preparing $home: dev keys, example models built and encrypted"
"$BIN/phiserve" dev init --source models

port=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
host="http://127.0.0.1:$port"
log="$home/server.log"
say "serving on $host (log: $log)"
# Job control on: the server gets its own process group, so cleanup can stop all of it.
set -m
PHISERVE_PORT=$port PHISERVE_DRAIN_DELAY_S=0 "$BIN/phiserve" serve >"$log" 2>&1 &
server_pid=$!
set +m

start=$SECONDS
until "$BIN/python" - "$host" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/v2/health/ready", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "demo: the server exited; its log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    if (( SECONDS - start > READY_TIMEOUT )); then
        echo "demo: the server was not ready within $READY_TIMEOUT s; its log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    sleep 0.5
done
say "ready after $(( SECONDS - start )) s"

PHISERVE_TOKEN=$("$BIN/phiserve" token issue --subject loadtest-demo --scope "infer:* metadata:read")
export PHISERVE_TOKEN

say "load test: closed loop, $USERS users, $DURATION s, both models, JSON and binary (report: $REPORT_DIR)"
args=(
    -f loadtests/locustfile.py --headless --only-summary --loglevel WARNING
    --host "$host" --load-shape closed -u "$USERS" -r "$USERS" -t "$DURATION" --warmup-s 3
    --models breast-cancer,chest-xray --encodings json,binary --scrape-interval 2
    --report-dir "$REPORT_DIR" --csv "$REPORT_DIR/locust" --html "$REPORT_DIR/locust.html"
)
[[ -n "$SLO_FILE" ]] && args+=(--slo-file "$SLO_FILE")
mkdir -p "$REPORT_DIR"
gate=0
"$BIN/locust" "${args[@]}" >"$REPORT_DIR/locust.log" 2>&1 || gate=$?
stop_server

if [[ ! -f "$REPORT_DIR/table.txt" ]]; then
    echo "demo: the load test wrote no report (exit $gate); its output:" >&2
    tail -n 40 "$REPORT_DIR/locust.log" >&2
    exit "$(( gate ? gate : 1 ))"
fi

say "report: $REPORT_DIR/report.md"
echo "(charts in $REPORT_DIR/charts/, locust's own HTML in $REPORT_DIR/locust.html)"
echo
"$BIN/python" - "$REPORT_DIR/summary.json" <<'PY'
import json, sys
win = json.load(open(sys.argv[1]))["window"]
print(f"Latency, exact percentiles over {win['seconds']:.1f} s (after a {win['warmup_s']:g} s warm-up):")
PY
cat "$REPORT_DIR/table.txt"
"$BIN/python" - "$REPORT_DIR/summary.json" <<'PY'
import json, sys
slo = json.load(open(sys.argv[1]))["slo"]
if slo["configured"]:
    missed = [c for c in slo["checks"] if not c["passed"]]
    print(f"\nSLO gate: {'passed' if not missed else 'MISSED'} ({len(slo['checks'])} checks)")
    for c in missed:
        print(f"  missed: {c['group']} {c['metric']} (limit {c['limit']})")
PY
exit "$gate"
