#!/usr/bin/env bash
# Copy the load-test code into the chart, so that `helm template|lint|package|install
# loadtests/chart` ships it (Helm reads files only from inside a chart). `make loadtest-chart`
# runs this and then `helm package`; the chart refuses to render without it.
#
#   loadtests/locustfile.py      -> chart/files/locustfile.py
#   loadtests/phiserve_load/*.py -> chart/files/phiserve_load/ (the installed package's sources)
#
# chart/files/ is generated (git ignores it): edit the sources, then run this again.
set -euo pipefail
cd "$(dirname "$0")"

files=chart/files
rm -rf "$files"
mkdir -p "$files/phiserve_load"
cp locustfile.py "$files/"
cp phiserve_load/*.py "$files/phiserve_load/"
echo "stage-chart.sh: copied locustfile.py and phiserve_load/ into loadtests/$files"
