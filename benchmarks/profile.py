"""Where does a phiserve worker spend its CPU under the benchmark's load? (py-spy, sampled)

    .venv/bin/pip install py-spy          # not a project dependency
    .venv/bin/python -m benchmarks.profile [shipped|off|trace1|trace0] [SECONDS]

Starts one phiserve variant of :mod:`benchmarks.serving` (default: as shipped), drives it with
the closed loop of 32 users, samples the BentoML worker process with ``py-spy record
--nonblocking`` for SECONDS (default 15), and prints the hottest functions (self and inclusive
samples) and the share of samples per package. The raw collapsed stacks are written to
reports/bench/profile-<variant>.txt for flame-graph tools.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import process_tree
from benchmarks.payloads import breast_cancer_json
from benchmarks.servers import REPO, _plain_env, start_phiserve, start_sink
from benchmarks.serving import phiserve_variants

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")
_LINE = re.compile(r":\d+\)$")


def package_of(path: str) -> str:
    """A short owner for a source file: phiserve.<subpackage>, else its top-level package.

    py-spy names files relative to their sys.path entry (``phiserve/audit/fsio.py``,
    ``uvicorn/server.py``, ``asyncio/runners.py``, ``threading.py``).
    """
    parts = path.replace("\\", "/").split("/")
    if "phiserve" in parts[:-1]:
        rest = parts[parts.index("phiserve") + 1 :]
        return "phiserve." + rest[0].removesuffix(".py")
    return parts[0].removesuffix(".py")


# Which thread a stack belongs to, by a frame only that kind of thread runs. Event-loop stacks
# resumed from uvloop callbacks do not always reach Runner.run, so the loop is the fallback.
_ROLES = (
    ("audit writer thread", ("AuditWriter._run",)),
    ("onnxruntime executor thread", ("_worker (concurrent/futures/thread.py",)),
    (
        "span export thread (the SDK's batch processor and OTLP exporter)",
        ("BatchProcessor", "opentelemetry/exporter"),
    ),
)


def role_of(frames: list[str]) -> str:
    """The kind of thread a sampled stack ran on."""
    for role, markers in _ROLES:
        if any(m in f for f in frames for m in markers):
            return role
    return "event loop (HTTP, middleware, handlers)"


def summarize(raw: str, top: int = 25) -> str:
    """Samples by thread role and package, and self/inclusive hot spots, from py-spy's raw output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    pkg_counts: collections.Counter[str] = collections.Counter()
    role_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if _FRAME.match(f)]
        if not frames:
            continue
        total += count
        leaf = _FRAME.match(frames[-1])
        assert leaf is not None
        # One entry per function, not per line: "f (file.py:12)" -> "f (file.py)".
        frames = [_LINE.sub(")", f) for f in frames]
        self_counts[frames[-1]] += count
        pkg_counts[package_of(leaf["file"])] += count
        role_counts[role_of(frames)] += count
        for frame in set(frames):
            incl_counts[frame] += count
    if not total:
        return "no samples (is the worker busy? is py-spy allowed to attach?)"

    def pct(c: int) -> str:
        return f"{100 * c / total:5.1f}%"

    out = [
        f"{total} samples of the worker's threads while not sleeping (a thread blocked in a",
        "syscall such as fsync counts as busy; C code called from Python, uvloop included, is",
        "charged to the calling frame)",
        "",
        "by thread:",
    ]
    out += [f"  {pct(c)}  {r}" for r, c in role_counts.most_common()]
    out += ["", "by package (self time):"]
    out += [f"  {pct(c)}  {p}" for p, c in pkg_counts.most_common(20)]
    out += ["", "hottest functions, self:"]
    out += [f"  {pct(c)}  {f}" for f, c in self_counts.most_common(top)]
    out += ["", "hottest functions, inclusive (phiserve's own frames):"]
    ours = [(f, c) for f, c in incl_counts.most_common() if "phiserve/" in f]
    out += [f"  {pct(c)}  {f}" for f, c in ours[:top]]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Start the variant, load it, sample it, print the summary."""
    variant = argv[0] if argv else "shipped"
    seconds = float(argv[1]) if len(argv) > 1 else 15.0
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    out_dir = REPO / "reports" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="phiserve-profile-") as tmp_name:
        tmp = Path(tmp_name)
        from tests.server import prepare_home

        prepare_home(tmp / "home", REPO / "models")
        sink = start_sink(tmp) if variant.startswith("trace") else None
        if sink:
            sink.wait_ready(path="/stats")
        label, env, auth = phiserve_variants(sink.url if sink else "http://127.0.0.1:9")[variant]
        server = start_phiserve(label, tmp / "home", tmp, env, auth=auth)
        try:
            server.wait_ready()
            workers = [
                p
                for p in process_tree([server.pid])
                if "_bentoml_impl.worker" in " ".join(p.cmdline())
            ]
            if not workers:
                raise RuntimeError("no BentoML worker process found under the server")
            conf = {
                "host": server.url,
                "payload": breast_cancer_json().to_json(),
                "mode": "closed",
                "users": 32,
                "warmup_s": 3.0,
                "seconds": seconds + 4,
                "token": server.token,
            }
            (tmp / "load.json").write_text(json.dumps(conf))
            load = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.loadgen",
                    str(tmp / "load.json"),
                    str(tmp / "r.json"),
                ],
                cwd=REPO,
                env=_plain_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(4)
            raw_path = out_dir / f"profile-{variant}.txt"
            subprocess.run(
                [
                    pyspy,
                    "record",
                    *("--pid", str(workers[0].pid), "--duration", str(int(seconds))),
                    *("--rate", "250", "--format", "raw", "--output", str(raw_path)),
                    "--nonblocking",
                ],
                check=True,
                capture_output=True,
            )
            load.wait(timeout=seconds + 60)
            result = json.loads((tmp / "r.json").read_text())
            print(
                f"{label}: {result['ok'] / result['window_s']:.0f} req/s while sampled "
                f"(py-spy itself costs some CPU)\n"
            )
            print(summarize(raw_path.read_text()))
            print(f"\nraw stacks: {raw_path}")
        finally:
            server.stop()
            if sink:
                sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
