#!/usr/bin/env bash
# `make loadtest`: locust against a running phiserve server; the report goes to
# reports/loadtest/<UTC time>/ (report.md, charts/, samples.csv, locust CSV and HTML).
#
# Settings come from the environment (or make variables: `make loadtest SHAPE=open RATE=50`):
#   HOST       server URL                          (default http://127.0.0.1:3000)
#   SHAPE      closed | open | ramp                (default closed)
#   USERS      closed loop: users                  (default 4)
#   RATE       open loop: requests per second      (default 20)
#   DURATION   seconds (closed and open loop)      (default 30)
#   WARMUP     seconds reported but not gated      (default 2)
#   MODELS     e.g. breast-cancer,chest-xray@1     (default both example models)
#   ENCODINGS  json,binary | json | binary         (default both)
#   SLO_FILE   thresholds file; empty: no gate     (default loadtests/slo.example.yaml)
#   SLO        thresholds, e.g. "p99=300,errors=1%" (on top of SLO_FILE)
#   REPORT_DIR where the report goes
# Token: PHISERVE_TOKEN or PHISERVE_TOKEN_FILE; otherwise a dev token is issued from
# PHISERVE_HOME (default .phiserve, what `make serve` prepared) when that exists.
# Anything else goes straight to locust: `bash loadtests/run.sh --batch-sizes 1,8`.
# Exit status: 0 the SLO held, 3 it was missed, 2 the run could not start.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
HOST=${HOST:-http://127.0.0.1:3000}
SHAPE=${SHAPE:-closed}
USERS=${USERS:-4}
RATE=${RATE:-20}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-2}
MODELS=${MODELS:-breast-cancer,chest-xray}
ENCODINGS=${ENCODINGS:-json,binary}
SLO_FILE=${SLO_FILE-loadtests/slo.example.yaml}
SLO=${SLO:-}
REPORT_DIR=${REPORT_DIR:-reports/loadtest/$(date -u +%Y%m%dT%H%M%SZ)}

if [[ ! -x "$BIN/locust" ]]; then
    echo "run.sh: $BIN/locust not found; run \`make setup\` first" >&2
    exit 2
fi

if [[ -z "${PHISERVE_TOKEN:-}" && -z "${PHISERVE_TOKEN_FILE:-}" ]]; then
    home=${PHISERVE_HOME:-.phiserve}
    # A dev token outlives the run: duration plus ten minutes (ramps are longer; 1 h cap is ample).
    ttl=$(( DURATION + 600 > 3600 ? DURATION + 600 : 3600 ))
    if [[ -d "$home" ]] && token=$(PHISERVE_HOME="$home" "$BIN/phiserve" token issue \
            --subject loadtest --scope "infer:* metadata:read" --ttl "$ttl" 2>/dev/null); then
        export PHISERVE_TOKEN=$token
        echo "run.sh: using a dev token issued from $home (subject loadtest)" >&2
    else
        echo "run.sh: no PHISERVE_TOKEN or PHISERVE_TOKEN_FILE and no dev keys in $home;" \
             "sending no token" >&2
    fi
fi

args=(
    -f loadtests/locustfile.py --headless --only-summary
    --host "$HOST" --load-shape "$SHAPE" -t "$DURATION" --warmup-s "$WARMUP"
    --models "$MODELS" --encodings "$ENCODINGS"
    --report-dir "$REPORT_DIR" --csv "$REPORT_DIR/locust" --html "$REPORT_DIR/locust.html"
)
case "$SHAPE" in
    closed) args+=(-u "$USERS" -r "$USERS") ;;
    open) args+=(--rate "$RATE") ;;
esac
[[ -n "$SLO_FILE" ]] && args+=(--slo-file "$SLO_FILE")
[[ -n "$SLO" ]] && args+=(--slo "$SLO")

mkdir -p "$REPORT_DIR"
exec "$BIN/locust" "${args[@]}" "$@"
