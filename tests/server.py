"""Start and stop real phiserve servers for tests (``phiserve serve`` on a free port)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx
import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(home: Path, **overrides: str) -> dict[str, str]:
    """The environment of a server or CLI: no stray PHISERVE_/OTEL_ settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHISERVE_", "OTEL_"))}
    env.update({"PHISERVE_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}, **overrides)
    return env


def run_cli(home: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run the ``phiserve`` command as a user would."""
    proc = subprocess.run(
        [str(BIN / "phiserve"), *args],
        env=clean_env(home, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"phiserve {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def prepare_home(home: Path, models_dir: Path) -> Path:
    """What ``make serve`` prepares: dev KEK, dev token keys, the example models."""
    run_cli(home, "dev", "init", "--source", str(models_dir))
    return home


def issue_token(home: Path, scope: str = "infer:* metadata:read", subject: str = "tester") -> str:
    """A dev token signed with the home's dev signing key."""
    out = run_cli(home, "token", "issue", "--subject", subject, "--scope", scope)
    return out.stdout.strip().splitlines()[-1]


class ServerProcess:
    """A ``phiserve serve`` process on a free port; a context manager that waits for readiness."""

    def __init__(
        self,
        home: Path,
        *,
        wait_ready: bool = True,
        timeout: float = 120.0,
        command: list[str] | None = None,
        **env: str,
    ) -> None:
        self.home = home
        # What to run instead of ``phiserve serve`` (the benchmarks' bare stack, say).
        self.command = command or [str(BIN / "phiserve"), "serve"]
        self.port = free_port()
        self.env = clean_env(home, PHISERVE_PORT=str(self.port), **env)
        self.wait_ready = wait_ready
        self.timeout = timeout
        self.log_path = home / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._token: str | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        scheme = "https" if "PHISERVE_TLS_CERT_FILE" in self.env else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """A token with every inference and metadata scope."""
        if self._token is None:
            self._token = issue_token(self.home)
        return self._token

    @property
    def auth(self) -> dict[str, str]:
        """Authorization header for :attr:`token`."""
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> ServerProcess:
        """Start the process (in its own session, so signals reach the whole tree)."""
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed by the process lifetime
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.wait_ready:
            self.wait_until_ready()
        return self

    def wait_until_ready(self) -> None:
        """Poll /v2/health/ready until 200; fail with the server log if it dies or times out."""
        self.wait_for_readiness(lambda r: r.status_code == 200)

    def wait_for_readiness(
        self, predicate: Callable[[httpx.Response], bool], timeout: float | None = None
    ) -> httpx.Response:
        """Poll /v2/health/ready until ``predicate(response)`` holds; returns that response."""
        deadline = time.monotonic() + (timeout or self.timeout)
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                response = httpx.get(f"{self.url}/v2/health/ready", timeout=2, verify=False)
                if predicate(response):
                    return response
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"readiness never matched (last: {last}):\n{self.log()[-4000:]}")

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        """SIGTERM to the main process only, as Kubernetes does to PID 1."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole process tree (arbiter and workers), as a pod or node failure
        would; the BentoML workers live in their own process groups, so a group kill is not
        enough."""
        assert self.proc is not None
        try:
            tree = [
                self.proc.pid,
                *(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)),
            ]
        except psutil.NoSuchProcess:
            tree = [self.proc.pid]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        psutil.wait_procs([p for p in map(_process, tree[1:]) if p], timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, then SIGKILL if needed; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
