"""Start and stop the servers under test: phiserve variants, Seldon MLServer, the floor, a sink.

phiserve is started exactly as a user starts it (``phiserve serve``) through the test suite's
:class:`tests.server.ServerProcess`; MLServer with ``mlserver start`` from its own virtual
environment; the floor with ``python -m benchmarks.floor``. Every process runs in its own session
so that stopping it reaches its whole tree (BentoML's arbiter and worker, MLServer's workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from benchmarks.machine import process_tree
from tests.server import ServerProcess, free_port, run_cli

REPO = Path(__file__).resolve().parent.parent
MLSERVER_VENV = Path(os.environ.get("BENCH_MLSERVER_VENV", REPO / ".venv-mlserver"))


@dataclass
class BenchServer:
    """A started server: where it listens, its root process, and how it was configured."""

    label: str
    url: str
    settings: dict[str, str]
    token: str | None = None
    notes: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    phiserve: ServerProcess | None = None
    log_path: Path | None = None
    home: Path | None = None
    # How to start the process again (not phiserve, which ServerProcess starts).
    argv: list[str] = field(default_factory=list)
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    # The process tree as seen once ready. BentoML's workers run in sessions of their own, so
    # a dead arbiter can leave an orphaned worker holding the port and the audit lock: these
    # are killed explicitly on restart and stop.
    tree: list[psutil.Process] = field(default_factory=list)

    def spawn(self) -> None:
        """Start (or start again) the process, in its own session, logging to ``log_path``."""
        if self.phiserve is not None:
            assert self.home is not None
            # A new port: the old one may linger in TIME_WAIT; the audit trail carries on.
            self.phiserve = ServerProcess(self.home, wait_ready=False, timeout=180, **self.settings)
            self.phiserve.start()
            self.url = self.phiserve.url
            return
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        """Whether the root process still runs."""
        proc = self.phiserve.proc if self.phiserve is not None else self.proc
        return proc is not None and proc.poll() is None

    def revive(self) -> bool:
        """Start the server again if it died (someone on this shared machine may kill it).

        Returns True when it had to be restarted.
        """
        if self.alive():
            return False
        self.restarts += 1
        self._kill_leftovers()
        self.spawn()
        self.wait_ready()
        return True

    @property
    def pid(self) -> int:
        """The root process; the load generator adds its children for CPU accounting."""
        if self.phiserve is not None and self.phiserve.proc is not None:
            return self.phiserve.proc.pid
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """What the server printed so far."""
        if self.phiserve is not None:
            return self.phiserve.log()
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_ready(self, timeout: float = 180.0, path: str = "/v2/health/ready") -> None:
        """Poll the ready route until 200; raise with the server's log if it dies first."""
        self._wait_ready(timeout, path)
        self.tree = process_tree([self.pid])

    def _kill_leftovers(self) -> None:
        """SIGKILL whatever is left of the recorded tree (psutil refuses reused pids)."""
        for proc in self.tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.tree = []

    def _wait_ready(self, timeout: float, path: str) -> None:
        if self.phiserve is not None:
            self.phiserve.timeout = timeout
            self.phiserve.wait_until_ready()
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.label} not ready in {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole process group if it lingers."""
        try:
            if self.phiserve is not None:
                self.phiserve.stop(timeout=30)
            elif self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            # Give graceful shutdown its moment, then make sure no orphan survives.
            deadline = time.monotonic() + 10
            while any(p.is_running() for p in self.tree) and time.monotonic() < deadline:
                time.sleep(0.2)
            self._kill_leftovers()


def _plain_env(**extra: str) -> dict[str, str]:
    """The caller's environment without settings that would change a server's behaviour."""
    prefixes = ("PHISERVE_", "OTEL_", "MLSERVER_", "BENCH_", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def start_phiserve(
    label: str,
    base_home: Path,
    workdir: Path,
    env: dict[str, str],
    *,
    auth: bool,
    command: list[str] | None = None,
) -> BenchServer:
    """``phiserve serve`` on a private copy of ``base_home`` (own audit dir, own BentoML home).

    ``auth``: issue a dev bearer token (``phiserve token issue``) for the load generator.
    ``command``: run this instead of ``phiserve serve`` (same settings, same home).
    """
    home = workdir / label.replace(" ", "-").replace("=", "").replace("(", "").replace(")", "")
    shutil.copytree(base_home, home)
    proc = ServerProcess(home, wait_ready=False, timeout=180, command=command, **env)
    token = None
    if auth:
        # The longest lifetime the dev CLI allows: the whole benchmark must fit inside it.
        token = (
            run_cli(
                home,
                "token",
                "issue",
                "--subject",
                "bench",
                "--scope",
                "infer:*",
                "--ttl",
                "86400",
            )
            .stdout.strip()
            .splitlines()[-1]
        )
    proc.start()
    return BenchServer(
        label=label, url=proc.url, settings=dict(env), token=token, phiserve=proc, home=home
    )


def mlserver_available() -> str | None:
    """The MLServer version in ``.venv-mlserver``, or None when that venv is absent."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if not exe.exists():
        return None
    out = subprocess.run(
        [
            str(MLSERVER_VENV / "bin" / "python"),
            "-c",
            "import mlserver; print(mlserver.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() or None


def start_mlserver(
    model_name: str,
    model_file: Path,
    workdir: Path,
    *,
    label: str = "MLServer",
    overrides: dict[str, object] | None = None,
) -> BenchServer:
    """``mlserver start`` with default settings except ports, loopback and the model entry.

    ``overrides``: further settings.json entries (e.g. ``{"debug": False}``), shown in the report.
    """
    slug = label.lower().replace(" ", "-").replace("=", "").replace("(", "").replace(")", "")
    root = workdir / slug
    model_dir = root / model_name
    model_dir.mkdir(parents=True)
    settings = {
        # Needed: free ports (the defaults 8080-8082 may be taken) and loopback only.
        "host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        **(overrides or {}),
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": model_name,
        "implementation": "benchmarks.mlserver_runtime.OnnxRuntimeModel",
        "parameters": {"uri": str(model_file)},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    shown = {k: str(v) for k, v in settings.items()}
    shown["model-settings.json"] = json.dumps(
        {**model_settings, "parameters": {"uri": "<plaintext ONNX in the bench temp dir>"}}
    )
    server = BenchServer(
        label=label,
        url=f"http://127.0.0.1:{settings['http_port']}",
        settings=shown,
        log_path=workdir / f"{slug}.log",
        argv=[str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)],
        cwd=root,  # MLServer keeps .metrics/ and .envs/ in its working directory
        env=_plain_env(PYTHONPATH=str(REPO)),
    )
    server.spawn()
    return server


def start_floor(model_name: str, model_file: Path, workdir: Path) -> BenchServer:
    """The bare Starlette + uvicorn floor (:mod:`benchmarks.floor`)."""
    port = free_port()
    server = BenchServer(
        label="floor",
        url=f"http://127.0.0.1:{port}",
        settings={"server": "uvicorn, httptools, uvloop, 1 worker, no access log"},
        log_path=workdir / "floor.log",
        argv=[
            *(sys.executable, "-m", "benchmarks.floor"),
            *("--model", str(model_file), "--name", model_name, "--port", str(port)),
        ],
        cwd=REPO,
        env=_plain_env(),
    )
    server.spawn()
    return server


def start_sink(workdir: Path) -> BenchServer:
    """The OTLP/HTTP sink that the tracing variants export to."""
    port = free_port()
    server = BenchServer(
        label="otlp-sink",
        url=f"http://127.0.0.1:{port}",
        settings={},
        log_path=workdir / "otlp-sink.log",
        argv=[sys.executable, "-m", "benchmarks.otlp_sink", str(port)],
        cwd=REPO,
        env=_plain_env(),
    )
    server.spawn()
    return server


def sink_stats(sink: BenchServer) -> dict[str, int]:
    """Exports the sink has received so far."""
    try:
        return httpx.get(sink.url + "/stats", timeout=2).json()
    except httpx.HTTPError:
        return {"posts": -1, "bytes": -1}
