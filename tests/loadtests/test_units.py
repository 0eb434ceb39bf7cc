"""Unit tests of the locust-free parts: options, mix, tensors, samples, SLO, /metrics parsing,
arrival schedule, knee detection, token source and the report renderer."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phiserve_load import arrivals, discovery, mix, options, promtext, report, slo, tensors
from phiserve_load.auth import TokenSource
from phiserve_load.discovery import ModelSignature, PreflightError, TensorSpec
from phiserve_load.samples import Sample, SampleWriter, percentile, read_samples, summarize

BREAST = ModelSignature(
    "breast-cancer",
    "1",
    (TensorSpec("input", "FP32", (-1, 30)),),
    (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
    max_batch_size=32,
)
XRAY = ModelSignature(
    "chest-xray",
    "1",
    (TensorSpec("image", "FP32", (-1, 1, 224, 224)),),
    (TensorSpec("logits", "FP32", (-1, 3)),),
    max_batch_size=8,
)


# --- options -------------------------------------------------------------------------------


def test_options_defaults_and_validation() -> None:
    opts = options.from_parsed(SimpleNamespace(), "http://h:1")
    assert opts.load_shape == "closed" and opts.duration_s == options.DEFAULT_DURATION_S
    assert opts.encodings == ("json", "binary") and opts.batch_sizes == (1,)
    ns = SimpleNamespace(run_time=7, load_shape="open", rate=5.0, batch_sizes="1, 4")
    opts = options.from_parsed(ns, "http://h:1")
    assert opts.duration_s == 7 and opts.is_open and opts.batch_sizes == (1, 4)
    # The hooks move -t to phiserve_duration_s; it wins (workers only see that one).
    ns = SimpleNamespace(run_time=None, phiserve_duration_s=3.0)
    assert options.from_parsed(ns).duration_s == 3.0
    for bad, message in [
        (SimpleNamespace(encodings="json,xml"), "--encodings"),
        (SimpleNamespace(batch_sizes="0"), "--batch-sizes"),
        (SimpleNamespace(batch_sizes="a"), "--batch-sizes"),
        (SimpleNamespace(rate=0.0), "--rate"),
        (SimpleNamespace(dispatchers=0), "--dispatchers"),
    ]:
        with pytest.raises(options.OptionsError, match=message):
            options.from_parsed(bad)


def test_ramp_plan() -> None:
    opts = options.LoadOptions(load_shape="ramp", ramp_start=10, ramp_step=5, ramp_steps=3)
    assert opts.total_s == 30 and opts.is_open
    assert [opts.ramp_value(i) for i in range(3)] == [10, 15, 20]
    assert [opts.step_of(t) for t in (0, 9.9, 10, 29.9, 45)] == [0, 0, 1, 2, 2]
    users = options.LoadOptions(load_shape="ramp", ramp_kind="users")
    assert not users.is_open


# --- discovery ----------------------------------------------------------------------------


def test_parse_models() -> None:
    got = discovery.parse_models("breast-cancer, chest-xray@1+2,x@default,y@all")
    assert got == [
        discovery.ModelRequest("breast-cancer"),
        discovery.ModelRequest("chest-xray", ("1", "2")),
        discovery.ModelRequest("x", ("",)),
        discovery.ModelRequest("y"),
    ]
    with pytest.raises(PreflightError, match="positive integers"):
        discovery.parse_models("m@v1")
    with pytest.raises(PreflightError, match="at least one"):
        discovery.parse_models(" , ")


def test_signature_from_metadata() -> None:
    doc = {
        "name": "m",
        "versions": ["1"],
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
        "parameters": {"max_batch_size": 16},
    }
    sig = discovery.signature_from_metadata(doc, "1")
    assert sig.inputs == (TensorSpec("x", "FP32", (-1, 3)),)
    assert sig.max_batch_size == 16 and sig.label == "m@1"
    assert discovery.signature_from_metadata(doc, "").label == "m@default"


def test_client_rejects_hosts_without_scheme() -> None:
    with pytest.raises(PreflightError, match="expected http"):
        discovery.Client("localhost:3000", None)
    with pytest.raises(PreflightError, match="no target"):
        discovery.Client("", None)


# --- tensors ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_json_payload_matches_the_signature(batch: int) -> None:
    p = tensors.build_payload(tensors.Target(BREAST, "json"), batch, random.Random(1))
    doc = json.loads(p.body)
    (inp,) = doc["inputs"]
    assert inp["name"] == "input" and inp["datatype"] == "FP32"
    assert inp["shape"] == [batch, 30] and len(inp["data"]) == batch * 30
    assert all(0 <= v < 1 for v in inp["data"])
    assert p.headers["Content-Type"] == "application/json"
    assert p.target.path == "/v2/models/breast-cancer/versions/1/infer"


def test_binary_payload_layout() -> None:
    p = tensors.build_payload(tensors.Target(XRAY, "binary"), 2, random.Random(1))
    head_len = int(p.headers["Inference-Header-Content-Length"])
    header = json.loads(p.body[:head_len])
    raw = p.body[head_len:]
    (inp,) = header["inputs"]
    assert inp["shape"] == [2, 1, 224, 224]
    assert inp["parameters"]["binary_data_size"] == len(raw) == 2 * 224 * 224 * 4
    assert header["outputs"] == [{"name": "logits", "parameters": {"binary_data": True}}]
    values = np.frombuffer(raw, dtype="<f4")
    assert values.size == 2 * 224 * 224 and (values >= 0).all() and (values < 1).all()


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("BOOL", "?"), ("UINT8", "u1"), ("INT32", "<i4"), ("INT64", "<i8"), ("FP16", "<f2"),
     ("FP64", "<f8")],
)  # fmt: skip
def test_every_numeric_datatype_packs_little_endian(datatype: str, dtype: str) -> None:
    values = tensors.random_values(datatype, 5, random.Random(2))
    raw = tensors.pack(datatype, values)
    back = np.frombuffer(raw, dtype=dtype)
    assert back.size == 5
    np.testing.assert_allclose(back.astype(float), np.array(values, dtype=float), rtol=1e-3)


def test_bytes_tensors_are_length_prefixed() -> None:
    raw = tensors.pack("BYTES", ["ab", "cde"])
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 3) + b"cde"


def test_shapes_and_unsupported_types() -> None:
    spec = TensorSpec("x", "FP32", (-1, -1, 4))
    assert tensors.concrete_shape(spec, 3, 8) == ([3, 8, 4], 3)
    assert tensors.concrete_shape(TensorSpec("x", "FP32", (2, 4)), 3, 8) == ([2, 4], 2)
    with pytest.raises(tensors.UnsupportedSignature, match="BF16"):
        tensors.random_values("BF16", 1, random.Random())


def test_batch_sizes_are_capped_by_the_model() -> None:
    assert tensors.usable_batches(XRAY, (1, 4, 64)) == (1, 4, 8)
    fixed = ModelSignature("f", "1", (TensorSpec("x", "FP32", (1, 3)),), ())
    assert tensors.usable_batches(fixed, (1, 4)) == (1,)


def test_request_names_group_by_route_template() -> None:
    t = tensors.Target(BREAST, "json")
    assert t.name(1) == "POST /v2/models/{model}/versions/{version}/infer [breast-cancer v1 json]"
    default = tensors.Target(ModelSignature("m", "", BREAST.inputs, ()), "binary")
    assert default.name(4) == "POST /v2/models/{model}/infer [m default binary b4]"
    assert default.path == "/v2/models/m/infer"


# --- mix ------------------------------------------------------------------------------------


def test_mix_weights_most_specific_wins() -> None:
    weighted = mix.build_targets(
        [BREAST, XRAY], ("json", "binary"), "breast-cancer=3,chest-xray:json=0,chest-xray@1=2"
    )
    got = {t.key: w for t, w in weighted}
    assert got == {"breast-cancer@1:json": 3, "breast-cancer@1:binary": 3, "chest-xray@1:binary": 2}
    chooser = mix.WeightedChooser(weighted, random.Random(3))
    counts: dict[str, int] = {}
    for _ in range(8000):
        key = chooser.choose().key
        counts[key] = counts.get(key, 0) + 1
    for key, share in chooser.shares().items():
        assert counts[key] / 8000 == pytest.approx(share, abs=0.03)


@pytest.mark.parametrize(
    ("text", "message"),
    [("nope=1", "no target matches"), ("breast-cancer", "key=weight"),
     ("breast-cancer=x", "not a number"), ("breast-cancer=0,chest-xray=0", "weight 0")],
)  # fmt: skip
def test_mix_errors(text: str, message: str) -> None:
    with pytest.raises(mix.MixError, match=message):
        mix.build_targets([BREAST, XRAY], ("json",), text)


# --- samples and percentiles ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1e5, allow_nan=False), min_size=1, max_size=300),
    st.floats(0, 100),
)
def test_percentile_is_numpys_linear_method(values: list[float], q: float) -> None:
    assert percentile(sorted(values), q) == pytest.approx(
        float(np.percentile(values, q)), rel=1e-9, abs=1e-9
    )


def _sample(
    lat: float, ok: bool = True, model: str = "m", t: float = 100.0, **kw: object
) -> Sample:
    fields = {
        "t_start": t, "t_end": t + lat / 1000, "name": f"POST x [{model}]", "model": model,
        "version": "1", "encoding": "json", "batch": 1, "latency_ms": lat, "service_ms": lat,
        "lag_ms": 0.0, "ok": ok, "status": 200 if ok else 503, "error": "" if ok else "HTTP 503",
        "step": -1,
    }  # fmt: skip
    fields.update(kw)
    return Sample(**fields)  # type: ignore[arg-type]


def test_summary_gates_successes_and_counts_failures() -> None:
    samples = [_sample(float(i)) for i in range(1, 101)] + [_sample(5000.0, ok=False)] * 3
    stats = summarize(samples, window_s=10)
    assert stats.requests == 103 and stats.failures == 3
    assert stats.error_rate == pytest.approx(3 / 103)
    assert stats.p99_ms == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert stats.max_ms == 100 and stats.throughput == 10
    empty = summarize([], 1)
    assert empty.requests == 0 and math.isnan(empty.p99_ms) and empty.to_json()["p99_ms"] is None


def test_samples_csv_round_trip(tmp_path: Path) -> None:
    writer = SampleWriter(tmp_path / "s.csv")
    original = [_sample(1.23456, t=1.5), _sample(7.0, ok=False, error='a, "quoted"\nerror')]
    writer.write(original)
    writer.close()
    writer.write([_sample(9.0)])  # after close: ignored
    back = read_samples(tmp_path / "s.csv")
    assert len(back) == 2 and writer.count == 2
    assert back[0].latency_ms == pytest.approx(1.2346, abs=1e-9)
    assert back[1].error == 'a, "quoted"\nerror' and back[1].ok is False
    assert Sample.from_wire(original[0].to_wire()) == original[0]


# --- SLO ------------------------------------------------------------------------------------


def test_slo_cli_syntax() -> None:
    spec = slo.parse_cli("p95=200,p99=0.5s,errors=1%;chest-xray:p99=800ms;chest-xray@2:p999=900")
    assert spec.limits == {
        "*": {"p95": 200, "p99": 500, "errors": 0.01},
        "chest-xray": {"p99": 800},
        "chest-xray@2": {"p999": 900},
    }
    assert spec.for_group("chest-xray@2") == {"p95": 200, "p99": 800, "errors": 0.01, "p999": 900}
    for bad, message in [("p98=1", "unknown SLO metric"), ("p99", "metric=value"),
                         ("errors=120%", "between 0 and 1"), ("p99=fast", "cannot read")]:  # fmt: skip
        with pytest.raises(slo.SLOError, match=message):
            slo.parse_cli(bad)


def test_slo_file_yaml_and_json_and_cli_override(tmp_path: Path) -> None:
    y = tmp_path / "slo.yaml"
    y.write_text("default: {p95_ms: 100, error_rate: '2%'}\nmodels:\n  m: {p99_ms: 300}\n")
    j = tmp_path / "slo.json"
    j.write_text(
        json.dumps(
            {"default": {"p95_ms": 100, "error_rate": 0.02}, "models": {"m": {"p99_ms": 300}}}
        )
    )
    assert slo.load_file(str(y)).limits == slo.load_file(str(j)).limits
    merged = slo.build("p95=50", str(y))
    assert merged.for_group("m") == {"p95": 50, "errors": 0.02, "p99": 300}
    (tmp_path / "bad.yaml").write_text("defaults: {}\n")
    with pytest.raises(slo.SLOError, match="unknown keys"):
        slo.load_file(str(tmp_path / "bad.yaml"))
    with pytest.raises(slo.SLOError, match="cannot read SLO file"):
        slo.load_file(str(tmp_path / "missing.yaml"))


def test_the_example_slo_file_parses() -> None:
    spec = slo.load_file(str(Path(__file__).resolve().parents[2] / "loadtests/slo.example.yaml"))
    assert spec.for_group("chest-xray")["p99"] == 1500


def test_gate_evaluation() -> None:
    fast = summarize([_sample(float(i)) for i in range(1, 101)], 1)
    spec = slo.parse_cli("p99=50,errors=0;other:p95=1;m@2:p50=1")
    checks = slo.evaluate(spec, {"m": fast, "m@1": fast}, targeted={"m", "m@1", "other"})
    by = {(c.group, c.metric): c for c in checks}
    assert not by[("m", "p99")].passed and by[("m", "p99")].describe() == "m p99 99.01 ms > 50 ms"
    assert by[("m", "errors")].passed
    # Targeted but never answered: fails. Named but not targeted (m@2): not applicable.
    assert not by[("other", "p95")].passed
    assert "no successful requests" in by[("other", "p95")].describe()
    assert ("m@2", "p50") not in by


# --- /metrics -------------------------------------------------------------------------------

METRICS_START = """
# HELP phiserve_queue_wait_seconds Time a request waited in the batch queue.
# TYPE phiserve_queue_wait_seconds histogram
phiserve_queue_wait_seconds_bucket{le="0.001",model="m",version="1"} 1.0
phiserve_queue_wait_seconds_bucket{le="0.01",model="m",version="1"} 2.0
phiserve_queue_wait_seconds_bucket{le="+Inf",model="m",version="1"} 2.0
phiserve_queue_wait_seconds_count{model="m",version="1"} 2.0
phiserve_queue_wait_seconds_sum{model="m",version="1"} 0.004
phiserve_request_duration_seconds_bucket{le="0.01",model="m",route="/v2/models/{model}/infer",status_class="2xx",version="1"} 2.0
phiserve_request_duration_seconds_bucket{le="+Inf",model="m",route="/v2/models/{model}/infer",status_class="2xx",version="1"} 2.0
phiserve_request_duration_seconds_count{model="m",route="/v2/models/{model}/infer",status_class="2xx",version="1"} 2.0
phiserve_request_duration_seconds_sum{model="m",route="/v2/models/{model}/infer",status_class="2xx",version="1"} 0.01
process_cpu_seconds_total 1.0
"""


def _bump(text: str, factor: float) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("phiserve_"):
            name, value = line.rsplit(" ", 1)
            line = f"{name} {float(value) * factor}"
        out.append(line)
    return "\n".join(out)


def test_prometheus_parse_and_histogram_quantile() -> None:
    series = promtext.parse(METRICS_START)
    assert not any(k.startswith("process_") for k in series)  # only phiserve families kept
    key = 'phiserve_request_duration_seconds_count{model="m",route="/v2/models/{model}/infer",status_class="2xx",version="1"}'
    assert series[key] == 2.0
    h = promtext.Histogram({0.1: 50, 0.2: 100, math.inf: 100}, count=100, sum=12)
    assert h.quantile(0.5) == pytest.approx(0.1)
    assert h.quantile(0.75) == pytest.approx(0.15)
    assert promtext.Histogram({0.1: 0, math.inf: 10}, 10, 5).quantile(0.99) == 0.1


def test_breakdown_is_the_delta_between_scrapes() -> None:
    start = promtext.parse(METRICS_START)
    end = promtext.parse(_bump(METRICS_START, 3.0))
    rows = promtext.breakdown(start, end)
    queue = rows["m@1"]["queue"]
    assert queue["count"] == 4 and queue["mean"] == pytest.approx(2.0)  # (0.012-0.004)/4 s
    assert rows["m@1"]["server"]["count"] == 4 and queue["consistent"]
    assert "inference" not in rows["m@1"]  # absent family: tolerated
    backwards = promtext.breakdown(end, start)
    assert not backwards["m@1"]["queue"]["consistent"]
    assert promtext.breakdown({}, {}) == {}


# --- arrivals and knee ----------------------------------------------------------------------


@pytest.mark.parametrize("dispatchers", [1, 2, 3])
def test_constant_arrivals_are_exact(dispatchers: int) -> None:
    opts = options.LoadOptions(load_shape="open", rate=60, duration_s=5, dispatchers=dispatchers)
    offsets = [t for t, _ in arrivals.arrival_schedule(opts, random.Random(dispatchers))]
    assert len(offsets) * dispatchers == 300
    gaps = np.diff(offsets)
    assert np.allclose(gaps, dispatchers / 60)
    assert 0 <= offsets[0] < dispatchers / 60 and offsets[-1] < 5


def test_poisson_and_ramp_arrivals() -> None:
    opts = options.LoadOptions(load_shape="open", rate=200, duration_s=20, arrival="poisson")
    n = len(list(arrivals.arrival_schedule(opts, random.Random(5))))
    assert n == pytest.approx(4000, rel=0.05)
    ramp = options.LoadOptions(load_shape="ramp", ramp_start=10, ramp_step=10, ramp_steps=3,
                               ramp_step_s=2)  # fmt: skip
    steps = [s for _, s in arrivals.arrival_schedule(ramp, random.Random(1))]
    assert [steps.count(i) for i in range(3)] == [20, 40, 60]


def test_an_endless_segment_keeps_the_exact_spacing() -> None:
    """What benchmarks/loadgen.py draws: constant arrivals until the caller stops."""
    endless = [arrivals.Segment(0.0, math.inf, 250.0)]
    got = list(itertools.islice(arrivals.arrivals(endless, "constant", random.Random(3)), 2000))
    phase = got[0][0]
    assert 0 <= phase < 1 / 250
    assert [t for t, _ in got] == [phase + k / 250 for k in range(2000)]
    assert {s for _, s in got} == {-1}


# The dispatcher needs gevent's hub: run it in a subprocess, like everything that imports locust.
DISPATCH = """
import json, sys
from gevent.event import Event
from phiserve_load import openloop
release = Event()
sent, dropped = [], []
def send(intended, item):
    sent.append([intended, item])
    release.wait()  # every request stays in flight until the last arrival
def drop(intended, item):
    dropped.append(item)
    if item == 39:
        release.set()
drawn = []
def schedule():
    for i in range(40):
        drawn.append(i)
        yield i * 0.002, i
def stopping():  # true once the arrival after the first argv[1] ones is due
    if len(drawn) <= int(sys.argv[1]):
        return False
    release.set()
    return True
openloop.dispatch(schedule(), send, drop, max_outstanding=5, stopping=stopping, drain_s=30)
print(json.dumps({"sent": sent, "dropped": dropped}))
"""


def _dispatch(stop_after: int) -> dict[str, list]:
    proc = subprocess.run(
        [sys.executable, "-c", DISPATCH, str(stop_after)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_open_loop_drops_what_exceeds_max_outstanding() -> None:
    """Five requests in flight: the sixth arrival onwards is dropped, not delayed."""
    got = _dispatch(stop_after=1000)
    assert [item for _, item in got["sent"]] == [0, 1, 2, 3, 4]
    assert got["dropped"] == list(range(5, 40))
    intended = [t for t, _ in got["sent"]]
    assert np.allclose(np.diff(intended), 0.002)


def test_the_open_loop_stops_when_told() -> None:
    got = _dispatch(stop_after=3)
    assert [item for _, item in got["sent"]] == [0, 1, 2]
    assert got["dropped"] == []


def test_knee_detection() -> None:
    def step(i: int, offered: float, achieved: float, p99: float) -> dict[str, object]:
        stats = summarize([_sample(p99)] * 10, 1)
        return {"step": i, "offered": offered, "achieved": achieved, "stats": stats}

    steps = [step(0, 10, 10, 5), step(1, 20, 20, 6), step(2, 30, 22, 40)]
    knee = report.find_knee(steps, "rate")
    assert knee is not None and knee["offered"] == 30 and knee["last_good"] == 20
    assert "achieved 22.0 of 30.0" in knee["why"] and "3x" in knee["why"]
    assert report.find_knee(steps[:2], "rate") is None
    users = [step(0, 1, 100, 5), step(1, 2, 180, 5), step(2, 4, 190, 5)]
    assert report.find_knee(users, "users")["offered"] == 4


# --- token source ---------------------------------------------------------------------------


def test_token_file_is_reread_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    source = TokenSource(str(path), env_value="ignored")
    assert source.headers() == {"Authorization": "Bearer first"}
    assert source.origin == f"token file {path}"
    path.write_text("second\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    monkeypatch.setattr(source, "_checked", 0.0)
    assert source.token() == "second"
    assert TokenSource("", env_value="").headers() == {}
    assert TokenSource("", env_value=" t ").origin == "$PHISERVE_TOKEN"
    with pytest.raises(FileNotFoundError, match="cannot read token file"):
        TokenSource(str(tmp_path / "missing"))


# --- report ---------------------------------------------------------------------------------


def _run_dir(tmp_path: Path, samples: list[Sample], **run: object) -> Path:
    out = tmp_path / "run"
    writer = SampleWriter(out / report.SAMPLES_FILE)
    writer.write(samples)
    writer.close()
    doc = {
        "host": "http://127.0.0.1:3000", "runner": "local", "started_at": 100.0,
        "stopped_at": 110.0, "warmup_s": 0.0, "open_loop": False,
        "options": {"load_shape": "closed", "models": "m", "encodings": ["json"], "batch_sizes": [1]},
        "slo": {}, "targets": [{"model": "m", "version": "1", "encoding": "json"}],
    }  # fmt: skip
    doc.update(run)
    (out / report.RUN_FILE).write_text(json.dumps(doc))
    return out


def test_render_report_from_files(tmp_path: Path) -> None:
    samples = [_sample(float(i), t=100 + i / 20) for i in range(1, 201)]
    samples += [_sample(0.0, ok=False, t=105)]
    out = _run_dir(tmp_path, samples, slo={"*": {"p99": 250.0, "errors": 0.01}})
    rendered = report.render(out, charts=True)
    assert rendered.gated and rendered.passed
    lat = np.arange(1, 201)
    assert rendered.summary["models"]["m"]["p99_ms"] == pytest.approx(np.percentile(lat, 99))
    assert (out / "table.txt").read_text().strip() == rendered.table
    md = (out / "report.md").read_text()
    assert "**PASSED**" in md and "Not available: not scraped" in md
    assert "| 1 | POST x [m]: HTTP 503 |" in md
    for name in ("latency_over_time", "throughput_over_time", "latency_cdf"):
        assert (out / "charts" / f"{name}.png").is_file()
    assert report.main([str(out), "--no-charts"]) == 0


def test_render_with_warmup_and_a_missed_gate(tmp_path: Path) -> None:
    samples = [_sample(1000.0, t=100.5)] + [
        _sample(float(i), t=103 + i / 100) for i in range(1, 101)
    ]
    out = _run_dir(tmp_path, samples, warmup_s=2.0, slo={"m": {"p50": 1.0}})
    rendered = report.render(out, charts=False)
    assert rendered.summary["models"]["m"]["requests"] == 100  # the warm-up request is out
    assert not rendered.passed and rendered.missed[0].metric == "p50"
    assert report.main([str(out), "--no-charts"]) == 3
    assert "Charts were not drawn (--no-charts)" in (out / "report.md").read_text()
    assert report.main([str(tmp_path)]) == 2  # not a report directory


def test_samples_csv_is_plain_csv(tmp_path: Path) -> None:
    out = _run_dir(tmp_path, [_sample(2.0)])
    with (out / report.SAMPLES_FILE).open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["latency_ms"] == "2.0000" and rows[0]["model"] == "m"
