"""A real redis-server for tests (loopback only, a free port, no persistence).

Needs the ``redis-server`` binary (Debian: ``apt-get install -y redis-server``). When it is
missing, :func:`find_redis` installs it as root on Debian (as the etcd fixture does) and
otherwise fails the test with the install command: a skipped test is not a passing one.
:meth:`RedisServer.stop` only touches the process this object started.

``RedisServer(cluster=True)`` is a one-node Redis Cluster that owns every slot (what the
``redis-cluster`` policies need to be exercised; real clusters have more nodes).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.debian import find_or_install

INSTALL_HINT = "redis-server is not installed (Debian: apt-get install -y redis-server)"




def find_redis() -> str:
    """The redis-server binary; as root on Debian, installs ``redis-server`` when missing."""
    return find_or_install("redis-server", "redis-server", INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1 (see the module docstring)."""

    def __init__(self, cluster: bool = False, password: str | None = None) -> None:
        self.binary = find_redis()
        self.cluster = cluster
        self.password = password
        self.port = _free_port()
        self.dir: Path | None = None  # made by start(): an unstarted server is a free port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def node(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.dir = Path(tempfile.mkdtemp("-redis"))
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            # the cluster bus needs a port too (by default port + 10000, maybe taken or > 65535)
            args += ["--cluster-enabled", "yes", "--cluster-port", str(_free_port()),
                     "--cluster-config-file", str(self.dir / "nodes.conf")]
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - kept open for the process
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") in ("PONG", b"PONG", True):
                    break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start:\n" + self.logs()) from None
                time.sleep(0.05)
        if self.cluster:
            self.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            while "cluster_state:ok" not in str(self.command("CLUSTER", "INFO")):
                if time.monotonic() > deadline:
                    raise RuntimeError("redis cluster did not become ok:\n" + self.logs())
                time.sleep(0.05)
        return self

    def client(self) -> Any:
        """A plain (synchronous) redis-py client to this server, for assertions."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=5)

    def command(self, *args: str) -> Any:
        with self.client() as c:
            return c.execute_command(*args)

    def keys(self, pattern: str = "*") -> list[str]:
        with self.client() as c:
            return sorted(c.keys(pattern))

    def flush(self) -> None:
        self.command("FLUSHALL")

    def logs(self) -> str:
        if self.dir is None:
            return ""
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
