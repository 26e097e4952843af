"""A real Ray head on 127.0.0.1 that the tests start, submit jobs to, and stop again.

``ray start --head`` daemonises its processes and ``ray stop`` kills every Ray process of the user,
including other people's clusters on a shared machine, so neither is used to stop it. Instead the
head runs under ``ray start --block`` in a new session: with ``--block`` Ray makes that process a
process-group leader and starts the GCS, raylet, dashboard and (through the raylet) every worker
and job driver inside its group. Stopping sends SIGTERM to it (Ray's own graceful shutdown), then
SIGKILL to whatever is left in the group, then to any process whose command line names this head's
temp dir (which only this head's processes carry). :meth:`LocalRayHead.leftovers` lets a test check
that nothing survived.

Every port is chosen free here instead of Ray's fixed defaults (8265, 10001, 52365, 10002-19999),
which another cluster on the machine may hold. Loopback needs ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
in every Ray process (otherwise Ray swaps 127.0.0.1 for the machine's outer address), and clients
need ``RAY_AUTH_MODE=token`` (the token is ~/.ray/auth_token, created by the head when missing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayHead:
    """``ray start --head --block`` with its own temp dir and ports; ``address`` is the dashboard URL."""

    def __init__(self, num_cpus: int = 2, python: Optional[str] = None, env: Optional[dict] = None,
                 timeout: float = 180, attempts: int = 3):
        self.python = python or sys.executable
        self.env = {**os.environ, **LOOPBACK_ENV, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)  # the pytest session's own cluster is not this one
        self.num_cpus = num_cpus
        failures = []
        for _ in range(attempts):
            # A port picked free can be taken by someone else before Ray binds it (other clusters run
            # here too): then this attempt's processes are stopped and another set of ports is tried.
            try:
                self._start(timeout)
                return
            except (RuntimeError, TimeoutError) as exc:
                failures.append(str(exc))
        raise RuntimeError(f"Ray head did not start in {attempts} attempts:\n" + "\n---\n".join(failures))

    def _start(self, timeout: float) -> None:
        # Short path: Ray puts Unix sockets under it, and those are limited to 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="ep-ray-", dir="/tmp")
        self.dashboard_port = free_port()
        ports = {
            "--port": free_port(), "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(), "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
        }
        ray_cli = str(Path(self.python).parent / "ray")
        cmd = [ray_cli, "start", "--head", "--block", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
               f"--temp-dir={self.temp_dir}", "--min-worker-port=0", "--max-worker-port=0",
               "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
        self.log_path = Path(self.temp_dir) / "ray-start.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._started: list = []  # what stop() found, so leftovers() also checks detached ones
        self.stop_seconds: dict = {}
        self.pgid = self.proc.pid  # start_new_session: the ray start process leads its own group
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        try:
            self._wait_ready(timeout)
        except BaseException:  # _wait_ready's errors carry ray start's output
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Until the job API answers (the dashboard starts after the GCS and raylet)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log()}")
            try:
                req = urllib.request.Request(f"{self.address}/api/jobs/", headers=self.auth_headers())
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Ray head not ready after {timeout:.0f}s:\n{self.log()}")

    @staticmethod
    def auth_headers() -> dict:
        """The bearer token Ray clients send (the head writes ~/.ray/auth_token when there is none)."""
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = os.environ.get("RAY_AUTH_TOKEN") or (path.read_text().strip() if path.exists() else "")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def client_env(self, **extra: str) -> dict:
        """Environment for a ``ray job submit`` client (or anything else) talking to this head."""
        return {**self.env, "RAY_ADDRESS": self.address, **extra}

    def _processes(self) -> list:
        """This head's processes: its process group, anything naming its temp dir, and their children.

        Job drivers run in a session of their own (Ray's job supervisor starts them that way), so
        they are found as descendants of the supervisor actor, which is in the group.
        """
        import psutil

        found = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid == os.getpid():
                    continue
                if os.getpgid(p.pid) == self.pgid or self.temp_dir in " ".join(p.info["cmdline"] or []):
                    found[p.pid] = p
                    for child in p.children(recursive=True):
                        found.setdefault(child.pid, child)
            except (psutil.Error, ProcessLookupError, OSError):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def leftovers(self) -> list[int]:
        """PIDs of processes of this head still alive (zombies excluded), also those seen at stop."""
        import psutil

        alive = []
        for p in {p.pid: p for p in self._started + self._processes()}.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except psutil.Error:
                continue
        return alive

    def stop(self, grace: float = 5) -> None:
        """Stop this head's processes and only those; then remove its temp dir."""
        import psutil

        t0 = time.monotonic()
        started = self._processes()  # before the shutdown orphans the job drivers
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # ray start --block shuts its processes down
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        for p in {p.pid: p for p in started + self._processes()}.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()
        self._started = started
        deadline = time.time() + 30
        while self.leftovers() and time.time() < deadline:
            time.sleep(0.5)
        t1 = time.monotonic()
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # logs, sockets, and the jobs' virtualenvs (GBs)
        self.stop_seconds = {"processes": round(t1 - t0, 1), "temp_dir": round(time.monotonic() - t1, 1)}
