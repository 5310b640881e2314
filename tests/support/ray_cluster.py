"""A Ray cluster for tests: ``ray start --head --block``, stopped by pid.

Never ``ray stop``: it stops every Ray process in the PID namespace, a developer's
own cluster too. The head gets its own temporary folder (``RAY_TMPDIR``, so its
``ray_current_cluster`` file is not the machine's) and its own auth token file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from rpcgen.runtime.poll import wait_until as poll_until
from tests.support.waiting import free_port

ROOT = Path(__file__).resolve().parents[2]


def ray_installed() -> bool:
    # find_spec, not import: the test process itself never loads Ray.
    return importlib.util.find_spec("ray") is not None


SKIP_NO_RAY = (
    "ray is not installed: the Ray backend tests need `pip install -e '.[test,ray]'` "
    "(the README's test command installs it)"
)


@dataclass
class RayNode:
    """One `ray start --block` process and what it started."""

    proc: subprocess.Popen[str]
    folder: Path
    address: str
    env: dict[str, str]
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 20.0) -> list[int]:
        """SIGTERM the node (Ray stops what it started), then SIGKILL what is left, by pid.

        Returns the pids that had to be killed.
        """
        procs = [*self.descendants()]
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.insert(0, psutil.Process(self.proc.pid))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        self.proc.wait(5)
        if self.reader is not None:
            self.reader.join(10)
        if self.proc.stdout is not None and not (self.reader and self.reader.is_alive()):
            self.proc.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        return [p.pid for p in alive]


def token_env(folder: Path) -> dict[str, str]:
    """Token auth with a token file of our own (mode 0600), not ~/.ray/auth_token."""
    token = folder / "auth_token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def start_node(
    *,
    head_address: str | None = None,
    num_cpus: int = 2,
    resources: str | None = None,
    node_ip: str | None = None,
    folder: Path | None = None,
    prefix: Sequence[str] = (),
    token_of: RayNode | None = None,
    timeout_s: float = 90.0,
    extra_env: dict[str, str] | None = None,
) -> RayNode:
    """Start a head (``head_address`` None) or a worker node; wait until it says started.

    ``prefix`` runs it under another command (``ip netns exec NS``).
    """
    # Short: Ray's Unix sockets live under it, and their paths have a length limit.
    folder = folder or Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
    env = dict(os.environ, RAY_TMPDIR=str(folder), RAY_USAGE_STATS_ENABLED="0")
    auth = token_env(token_of.folder if token_of is not None else folder)
    env.update(auth)
    env.update(extra_env or {})
    env.pop("RAY_ADDRESS", None)
    port = free_port() if head_address is None else None
    args = [*prefix, sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]
    if head_address is None:
        args += ["--head", "--port", str(port), "--include-dashboard", "false"]
        if importlib.util.find_spec("grpc") is not None:
            # With ray[client]'s packages installed, Ray's client server would take port
            # 10001: a free one instead (tests may run at once). Without them it does not
            # start, and the option is an error.
            args += ["--ray-client-server-port", str(free_port())]
    else:
        args += ["--address", head_address]
    args += ["--num-cpus", str(num_cpus), "--disable-usage-stats", "--temp-dir", str(folder)]
    if resources:
        args += ["--resources", resources]
    if node_ip:
        args += ["--node-ip-address", node_ip]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    lines: queue.Queue[str | None] = queue.Queue()
    node = RayNode(proc, folder, head_address or "", env)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            node.output.append(line.rstrip())
            lines.put(line)
        lines.put(None)

    node.reader = threading.Thread(target=pump, daemon=True)
    node.reader.start()
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.01))
        except queue.Empty:
            line = ""
        if line is None or remaining <= 0:
            node.stop()
            raise RuntimeError("ray start failed:\n" + "\n".join(node.output[-30:]))
        if "Ray runtime started" in line:
            break
    if head_address is None:
        recorded = folder / "ray_current_cluster"
        fallback = f"{node_ip or '127.0.0.1'}:{port}"

        def written() -> str:
            return recorded.read_text().strip() if recorded.exists() else ""

        # Ray may say "started" a moment before the file has its text (seen once in CI:
        # an empty address): wait for it, bounded, then use the address we asked for.
        poll_until(lambda: bool(written()), timeout_s=10)
        node.address = written() or fallback
    node.env = {
        "RAY_ADDRESS": node.address,
        "RAY_TMPDIR": str(folder),
        "RAY_USAGE_STATS_ENABLED": "0",
        **auth,
        **(extra_env or {}),
    }
    return node


def scenario_env(node: RayNode | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR"):
        env.pop(key, None)
    if node is not None:
        env.update(node.env)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def parse_line(tag: str, text: str) -> dict[str, Any] | None:
    for line in text.splitlines():
        if line.startswith(tag + " "):
            value: dict[str, Any] = json.loads(line[len(tag) + 1 :])
            return value
    return None


def run_scenario(
    node: RayNode | None,
    name: str,
    *args: str,
    timeout_s: float = 150.0,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one scenario of tests.support.ray_scenarios as its own program; its RESULT."""
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "tests.support.ray_scenarios", name, *args],
        cwd=ROOT,
        env=env or scenario_env(node),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    result = parse_line("RESULT", done.stdout)
    if done.returncode != 0 or result is None:
        raise AssertionError(
            f"scenario {name} exited with {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
            f"\n--- stderr\n{done.stderr[-6000:]}"
        )
    return result
