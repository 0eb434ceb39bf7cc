#!/usr/bin/env bash
# `make monitor`: Prometheus (Debian's prometheus package, 2.42) scraping a running phiserve and
# evaluating the shipped alert rules (platform/phiserve/monitoring/alerts/phiserve.rules.yml).
# Runs in the foreground until Ctrl-C; its data lives under MONITOR_DIR.
#
#   TARGET=127.0.0.1:3000           phiserve's host:port (/metrics needs no token)
#   SCHEME=http                     https when phiserve serves TLS
#   PROMETHEUS_ADDR=127.0.0.1:9090  where Prometheus's UI and HTTP API listen
#   SCRAPE_INTERVAL=5s              scrape and rule evaluation interval
#   MONITOR_DIR=reports/monitor     its config and time-series database
#
# Import platform/phiserve/telemetry/dashboards/phiserve.json into a Grafana pointed at it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${TARGET:-127.0.0.1:3000}"
scheme="${SCHEME:-http}"
addr="${PROMETHEUS_ADDR:-127.0.0.1:9090}"
interval="${SCRAPE_INTERVAL:-5s}"
dir="${MONITOR_DIR:-$repo/reports/monitor}"
rules="$repo/platform/phiserve/monitoring/alerts/phiserve.rules.yml"

command -v prometheus >/dev/null || {
  echo "monitor: prometheus is missing: apt-get install prometheus (or make prometheus)" >&2
  exit 1
}
mkdir -p "$dir/data"
cat >"$dir/prometheus.yml" <<CONFIG
global:
  scrape_interval: $interval
  evaluation_interval: $interval
rule_files:
  - $rules
scrape_configs:
  - job_name: phiserve
    metrics_path: /metrics
    scheme: $scheme
    tls_config:
      insecure_skip_verify: true  # a dev server's self-signed certificate
    static_configs:
      - targets: ["$target"]
CONFIG
promtool check config "$dir/prometheus.yml" >/dev/null
echo "monitor: Prometheus on http://$addr, scraping $scheme://$target/metrics every $interval"
exec prometheus \
  --config.file="$dir/prometheus.yml" \
  --storage.tsdb.path="$dir/data" \
  --storage.tsdb.retention.time=1d \
  --web.listen-address="$addr"
