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

import fcntl
import json
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

# `ray start` for a worker node that joins a head on 127.0.0.1 (see LocalRayNode).
JOIN_ON_LOOPBACK = (
    "import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; main()"
)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


def thin_python() -> str:
    """This interpreter behind a virtualenv of a few files that reads this one's packages (a ``.pth``).

    A head whose Ray runs from a virtualenv makes every ``pip`` runtime env by copying that virtualenv
    on every node (Ray's ``_clonevirtualenv``): 2.7 GB of .venv per node and job here, most of the time
    of a ``ray job submit`` test. From this one Ray copies a few files, ``pip`` finds every pinned
    package already installed, and the job imports the same packages (made once per interpreter)."""
    import hashlib
    import site
    import sysconfig

    packages = site.getsitepackages()[0]
    key = hashlib.sha256(f"{sys.executable}:{packages}".encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"embedpipe-thin-python-{key}"
    python, done = root / "bin" / "python", root / "made"
    # Made in place (its scripts name their own path), once, under a lock other test processes share.
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
            purelib = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
            # `import` lines of a .pth run at start: addsitedir also reads that directory's own .pth
            # files (the editable install of this project among them).
            (purelib / "embedpipe_packages.pth").write_text(f"import site; site.addsitedir({packages!r})\n")
            ray_cli = root / "bin" / "ray"
            ray_cli.write_text(f"#!{python}\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n")
            ray_cli.chmod(0o755)
            done.write_text("")
    return str(python)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayHead:
    """``ray start --head --block`` with its own temp dir and ports; ``address`` is the dashboard URL."""

    def __init__(
        self,
        num_cpus: int = 2,
        python: Optional[str] = None,
        env: Optional[dict] = None,
        timeout: float = 180,
        attempts: int = 3,
        resources: Optional[dict] = None,
        object_store_mb: Optional[int] = None,
    ):
        self.resources = resources or {}
        self.object_store_mb = object_store_mb
        self.python = python or thin_python()
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
        self.gcs_port = free_port()
        ports = {
            "--port": self.gcs_port,
            "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": (metrics_port := free_port()),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
        }
        ray_cli = str(Path(self.python).parent / "ray")
        cmd = [
            ray_cli,
            "start",
            "--head",
            "--block",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            *(["--resources", json.dumps(self.resources)] if self.resources else []),
            *([f"--object-store-memory={self.object_store_mb * 2**20}"] if self.object_store_mb else []),
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--temp-dir={self.temp_dir}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
            *(f"{k}={v}" for k, v in ports.items()),
        ]
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # the node's Prometheus endpoint
        self._launch(cmd, timeout)

    def _launch(self, cmd: list[str], timeout: float) -> None:
        """Run ``ray start ... --block`` as the leader of a new process group; wait until it is up."""
        self.log_path = Path(self.temp_dir) / "ray-start.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._started: list = []  # what stop() found, so leftovers() also checks detached ones
        self.stop_seconds: dict = {}
        self.pgid = self.proc.pid  # start_new_session: the ray start process leads its own group
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
            time.sleep(0.25)
        raise TimeoutError(f"Ray head not ready after {timeout:.0f}s:\n{self.log()}")

    @staticmethod
    def auth_headers() -> dict:
        """The bearer token Ray clients send (the head writes ~/.ray/auth_token when there is none)."""
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = os.environ.get("RAY_AUTH_TOKEN") or (path.read_text().strip() if path.exists() else "")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def nodes(self) -> list[dict]:
        """The cluster's nodes as the head's state API lists them (``[]`` while it does not answer)."""
        req = urllib.request.Request(f"{self.address}/api/v0/nodes?limit=100&detail=true", headers=self.auth_headers())
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.load(resp)["data"]["result"]["result"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, KeyError, ValueError):
            return []

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


class LocalRayNode(LocalRayHead):
    """A worker node joined to ``head``: ``ray start --address=... --block`` in a session of its own.

    It is started, stopped and cleaned up the way the head is (its own temp dir and ports; only its
    own processes are stopped). :meth:`kill` is a lost node: SIGKILL to its raylet, its workers and
    everything else it started, at once. ``node_id`` is Ray's id for it, read from the head.
    """

    def __init__(
        self,
        head: LocalRayHead,
        num_cpus: int = 1,
        resources: Optional[dict] = None,
        timeout: float = 120,
        attempts: int = 3,
    ):
        self.head = head
        # `ray start --address` refuses to join with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ("multi-node
        # clusters are not supported"), and with 1 it swaps the head's 127.0.0.1 for the machine's
        # outer address, where the head (on loopback) does not listen. So the node's `ray start` runs
        # with 1 and with Ray's localhost swap turned off (JOIN_ON_LOOPBACK).
        super().__init__(
            num_cpus=num_cpus,
            python=head.python,
            timeout=timeout,
            attempts=attempts,
            resources=resources,
            env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},
        )

    def _start(self, timeout: float) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="ep-rayn-", dir="/tmp")
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--metrics-export-port": (metrics_port := free_port()),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # this node's processes' metrics
        # A resource only this node has: how the head's node list tells this node from the others.
        self.marker = f"test_node_{Path(self.temp_dir).name}"
        cmd = [
            self.python,
            "-c",
            JOIN_ON_LOOPBACK,
            "start",
            f"--address=127.0.0.1:{self.head.gcs_port}",
            "--block",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--resources",
            json.dumps({**self.resources, self.marker: 1}),
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
            *(f"{k}={v}" for k, v in ports.items()),
        ]
        self.address = self.head.address
        self.node_id = ""
        self._launch(cmd, timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until the head lists this node as alive."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start (worker node) exited with {self.proc.returncode}:\n{self.log()}")
            for node in self.head.nodes():
                if self.marker in node.get("resources_total", {}) and node.get("state") == "ALIVE":
                    self.node_id = node["node_id"]
                    return
            time.sleep(0.25)
        raise TimeoutError(f"worker node not alive after {timeout:.0f}s:\n{self.log()}")

    def kill(self) -> None:
        """The node is lost: SIGKILL to all of its processes at once (no graceful shutdown)."""
        import psutil

        for p in self._processes():
            try:
                p.kill()
            except psutil.Error:
                pass
