"""Run sixgate as users run it: ``sixgate start -c <dir>/config.yaml`` in a subprocess."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.upstream import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not open after {timeout}s")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a supervisor's workers), sorted."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def wait_until(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns a truthy value; returns it (or raises TimeoutError)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, http.client.HTTPException) as err:
            last = err
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s (last: {last!r})")


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.header_list = headers
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:80]!r}>"


class GatewayProcess:
    """A sixgate process on a free port with its own conf directory."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        self.dir = workdir
        self.port = free_port()
        self.conf = workdir / "conf"
        self.conf.mkdir(parents=True, exist_ok=True)
        base: dict[str, Any] = {
            # no control API unless a test asks (its default port 9090 is one for all)
            # no fixed ports (control 9090, HTTPS 9443) unless a test asks for them
            "apisix": {"node_listen": [self.port], "enable_ipv6": False, "enable_control": False,
                       "ssl": {"enable": False}},
            "plugin_attr": {"prometheus": {"enable_export_server": False}},
            "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}},
            "nginx_config": {"error_log_level": "info"},
        }
        _merge(base, config or {})
        self.config = base
        (self.conf / "config.yaml").write_text(yaml.safe_dump(base))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "stderr.log"

    def write_apisix(self, doc: dict[str, Any] | str) -> None:
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False) + "#END\n"
        tmp = self.conf / "apisix.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.conf / "apisix.yaml")

    def apply(self, doc: dict[str, Any], timeout: float = 5.0) -> None:
        """Write ``doc`` (plus a probe route) and wait until the gateway serves it."""
        self._generation = getattr(self, "_generation", 0) + 1
        token = f"gen-{self._generation}"
        doc = dict(doc)
        routes = list(doc.get("routes") or [])
        routes.append({
            "id": "__probe", "uri": "/__probe",
            "plugins": {"fault-injection": {"abort": {"http_status": 200, "body": token}}},
        })
        doc["routes"] = routes
        self.write_apisix(doc)
        wait_until(lambda: self.get("/__probe").text == token, timeout)

    def start(self, doc: dict[str, Any] | str | None = None) -> GatewayProcess:
        self.start_background(doc)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError("gateway did not start:\n" + self.logs()) from None
        return self

    def start_background(self, doc: dict[str, Any] | str | None = None) -> GatewayProcess:
        """Start without waiting for the proxy port (a control plane has none)."""
        if doc is not None:
            self.write_apisix(doc)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernel.cli", "start", "-c", str(self.conf / "config.yaml")],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"), env=env,
        )
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes | None = None, timeout: float = 10.0,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Response(r.status, r.getheaders(), r.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def raw(self, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
        """Send raw bytes; return everything the gateway answers until it closes (or timeout)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout) as s:
            s.sendall(data)
            chunks = []
            s.settimeout(timeout)
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if not read_until_close:
                        break
            except TimeoutError:
                pass
            return b"".join(chunks)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
