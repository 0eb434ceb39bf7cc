"""Locust load tests for phiserve (Open Inference Protocol / KServe V2).

The distribution ``phiserve-load`` (loadtests/pyproject.toml), installed by ``make setup``:
``loadtests/locustfile.py``, the benchmarks and the tests import it, and the Helm chart in
``loadtests/chart/`` ships the same files to the cluster in a ConfigMap (``make loadtest-chart``
copies them in). It must therefore run on a stock locust image: the standard library and locust
only. PyYAML and matplotlib are used when present (YAML SLO files, charts) and skipped with a
note when absent.

Modules, one concern each (those marked * import locust or gevent; the rest are plain Python):

options     the custom command-line arguments (``--load-shape``, ``--models``, ``--slo`` ...)
auth        the bearer token, from ``PHISERVE_TOKEN`` or a token file
discovery   preflight (reachable, ready, token accepted) and model signatures from metadata
tensors     valid random tensors per signature, as JSON or binary-extension requests
mix         which model, version and encoding each request goes to, with weights
arrivals    the open-loop arrival schedule
openloop*   the open-loop dispatcher: each arrival on time, at most N in flight, the rest dropped
samples     exact per-request samples, percentiles and summaries
slo         thresholds per model (CLI or YAML/JSON file) and the gate
promtext    the Prometheus text format and histogram deltas of the server's /metrics
cds         CDS Hooks calls: a SYNTHETIC prefetch, the call body, client JWTs (PyJWT, [cds] extra)
report      summary.json, report.md, table.txt; charts (matplotlib) draws the PNGs
session*    one process's options, token, signatures and payloads
shapes*     closed loop, open loop (fixed arrival rate), step ramp
users*      the locust users: closed-loop clients and the open-loop dispatcher
cds_user*   the CDS Hooks user (``--cds-service``) and its preflight
hooks*      the locust event listeners that tie the above together
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
