"""HTTPS termination against real ``sixgate start`` processes (spec §1.4 ``apisix.ssl``, §2.11
ssl objects, §10.1, §10.2): certificates chosen per SNI at handshake time, hot changes through
the standalone file and through the Admin API, mTLS, and the compiled ssl table itself."""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.encryption import DEFAULT_KEYRING, Keyring, encrypt_ssl
from kernel.plugins.loader import load_registry
from kernel.plugins.manager import PluginRegistry
from kernel.state import build_state
from kernel.store.base import Snapshot, freeze_collections
from kernel.tls import SslTable, TlsSettings, certificates_report, compile_ssl
from tests.support.gateway import GatewayProcess, wait_port, wait_until
from tests.support.tls import CA, Issued, client_context, handshake, tls_request
from tests.support.upstream import Upstream, free_port

KEY = "edd1c9f034335f136f87ad84b625c8f0"


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture(scope="module")
def certs(ca: CA) -> dict[str, Issued]:
    return {
        "a": ca.issue("a.test"),
        "b": ca.issue("b.test"),
        "wild": ca.issue("*.wild.test"),
        "exact": ca.issue("exact.wild.test"),
        "fallback": ca.issue("fallback.test"),
        "rsa": ca.issue("dual.test", rsa_key=True),
        "ec": ca.issue("dual.test"),
        "mtls": ca.issue("mtls.test"),
        "skip": ca.issue("skip.test"),
    }


def ssl_obj(sid: str, pair: Issued, *snis: str, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "cert": pair.cert, "key": pair.key, "snis": list(snis), **extra}


# -- the standalone file (data plane, yaml) ------------------------------------------------------


class TlsGateway(GatewayProcess):
    """A gateway with two HTTPS ports (the second asks for HTTP/2) and a fallback SNI."""

    def __init__(self, workdir: Path) -> None:
        self.ssl_ports = [free_port(), free_port()]
        super().__init__(workdir, {"apisix": {"ssl": {"enable": True,
            "listen": [{"port": self.ssl_ports[0]},
                       {"port": self.ssl_ports[1], "enable_http2": True}],
            "fallback_sni": "fallback.test"}}})


@pytest.fixture(scope="module")
def tls_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    g = TlsGateway(tmp_path_factory.mktemp("tls"))
    g.start({"routes": []})
    try:
        wait_port(g.ssl_ports[0])
        yield g
    finally:
        g.stop()


def routes(upstream: Upstream) -> list[dict[str, Any]]:
    nodes = {f"127.0.0.1:{upstream.port}": 1}
    return [
        {"id": "hello", "uri": "/hello", "upstream": {"nodes": nodes, "type": "roundrobin"}},
        {"id": "echo", "uri": "/echo", "upstream": {"nodes": nodes, "type": "roundrobin"},
         "plugins": {"proxy-rewrite": {"headers": {"set": {
             "X-SNI": "$ssl_server_name", "X-Scheme": "$scheme",
             "X-Server-Port": "$server_port", "X-Verify": "$ssl_client_verify"}}}}},
    ]


def test_certificate_per_sni_and_https_requests(
    tls_gw: TlsGateway, certs: dict[str, Issued], ca: CA,
    shared_upstreams: tuple[Upstream, Upstream],
) -> None:
    up = shared_upstreams[0]
    tls_gw.apply({"routes": routes(up), "ssls": [
        ssl_obj("1", certs["a"], "a.test"), ssl_obj("2", certs["b"], "B.Test")]})
    port, port2 = tls_gw.ssl_ports
    assert handshake(port, "a.test") == certs["a"].der
    assert handshake(port, "b.test") == certs["b"].der  # snis are matched lower-cased
    assert handshake(port, "B.TEST.") == certs["b"].der  # trailing dot stripped
    assert handshake(port2, "a.test") == certs["a"].der  # every apisix.ssl.listen port
    # a verifying client checking the name accepts what it gets
    r = tls_request(port, "a.test", "/hello", ctx=client_context(ca=ca))
    assert (r.status, r.text) == (200, "hello world\n")
    r = tls_request(port2, "b.test", "/echo", ctx=client_context(ca=ca))
    sent = {k.lower(): v for k, v in r.json()["headers"]}
    assert sent["x-forwarded-proto"] == "https"
    assert sent["x-sni"] == "b.test" and sent["x-scheme"] == "https"
    assert sent["x-server-port"] == str(port2) and sent["x-forwarded-port"] == str(port2)
    assert sent["x-verify"] == "NONE"
    # keep-alive: several requests on one TLS connection
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.sock = client_context().wrap_socket(
        socket.create_connection(("127.0.0.1", port)), server_hostname="a.test")
    for _ in range(3):
        conn.request("GET", "/hello", headers={"Host": "a.test"})
        assert conn.getresponse().read() == b"hello world\n"
    conn.close()
    # an unknown name: no certificate, the handshake fails
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(port, "unknown.test")
    # ALPN offers http/1.1 only (enable_http2 on the second port is logged, not served)
    ctx = client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port2), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    assert "enable_http2 is not supported" in tls_gw.logs()


def test_wildcard_exact_and_fallback(tls_gw: TlsGateway, certs: dict[str, Issued]) -> None:
    tls_gw.apply({"ssls": [
        ssl_obj("w", certs["wild"], "*.wild.test"),
        ssl_obj("e", certs["exact"], "exact.wild.test"),
        ssl_obj("f", certs["fallback"], "fallback.test"),
    ]})
    port = tls_gw.ssl_ports[0]
    assert handshake(port, "x.wild.test") == certs["wild"].der
    assert handshake(port, "exact.wild.test") == certs["exact"].der  # exact beats wildcard
    for name in ("a.b.wild.test", "wild.test"):  # exactly one label more
        with pytest.raises((ssl.SSLError, OSError)):
            handshake(port, name)
    assert handshake(port, None) == certs["fallback"].der  # no SNI: apisix.ssl.fallback_sni


def test_rsa_and_ecdsa_in_one_object(tls_gw: TlsGateway, certs: dict[str, Issued]) -> None:
    tls_gw.apply({"ssls": [{"id": "d", "cert": certs["ec"].cert, "key": certs["ec"].key,
                            "certs": [certs["rsa"].cert], "keys": [certs["rsa"].key],
                            "snis": ["dual.test"]}]})
    port = tls_gw.ssl_ports[0]
    v12 = ssl.TLSVersion.TLSv1_2
    rsa_only = client_context(version=v12, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    ec_only = client_context(version=v12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert handshake(port, "dual.test", rsa_only) == certs["rsa"].der
    assert handshake(port, "dual.test", ec_only) == certs["ec"].der


def test_standalone_file_changes_are_hot(
    tls_gw: TlsGateway, certs: dict[str, Issued], ca: CA
) -> None:
    port = tls_gw.ssl_ports[0]
    tls_gw.apply({"ssls": [ssl_obj("1", certs["a"], "a.test")]})
    assert handshake(port, "a.test") == certs["a"].der
    renewed = ca.issue("a.test")
    tls_gw.apply({"ssls": [ssl_obj("1", renewed, "a.test")]})  # changed: the next handshake
    assert handshake(port, "a.test") == renewed.der
    tls_gw.apply({"ssls": [ssl_obj("1", renewed, "a.test", status=0)]})  # disabled
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(port, "a.test")
    tls_gw.apply({"ssls": [ssl_obj("1", renewed, "a.test", type="client")]})  # not served
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(port, "a.test")
    tls_gw.apply({"ssls": []})  # deleted
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(port, "a.test")


def test_object_ssl_protocols(tls_gw: TlsGateway, certs: dict[str, Issued]) -> None:
    tls_gw.apply({"ssls": [ssl_obj("1", certs["a"], "a.test", ssl_protocols=["TLSv1.3"])],
                  "routes": [{"id": "x", "uri": "/x", "plugins": {"fault-injection": {
                      "abort": {"http_status": 200, "body": "x"}}}}]})
    port = tls_gw.ssl_ports[0]
    ok = tls_request(port, "a.test", "/x", ctx=client_context(version=ssl.TLSVersion.TLSv1_3))
    assert (ok.status, ok.text) == (200, "x")
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        tls_request(port, "a.test", "/x", ctx=client_context(version=ssl.TLSVersion.TLSv1_2))


def test_client_mtls(tls_gw: TlsGateway, certs: dict[str, Issued], ca: CA,
                     shared_upstreams: tuple[Upstream, Upstream]) -> None:
    client_ca = CA("clients")
    good = client_ca.issue("alice", client=True)
    stranger = CA("strangers").issue("mallory", client=True)
    tls_gw.apply({"routes": routes(shared_upstreams[0]), "ssls": [
        ssl_obj("m", certs["mtls"], "mtls.test", client={"ca": client_ca.pem, "depth": 1}),
        ssl_obj("s", certs["skip"], "skip.test",
                client={"ca": client_ca.pem, "skip_mtls_uri_regex": ["^/hel+o$"]}),
        ssl_obj("a", certs["a"], "a.test"),
        ssl_obj("d", certs["a"], "depth0.test", client={"ca": client_ca.pem, "depth": 0}),
    ]})
    port = tls_gw.ssl_ports[0]
    failures = (ssl.SSLError, OSError, http.client.HTTPException)
    # client.depth: a certificate from an intermediate CA (sent along) is one level too deep
    # for depth 0, and fine for the default depth 1
    deep = CA("intermediate", parent=client_ca).issue("carol", client=True)
    with pytest.raises(failures):
        tls_request(port, "depth0.test", "/hello", ctx=client_context(client=deep))
    assert tls_request(port, "depth0.test", "/hello", ctx=client_context(client=good)).status == 200
    assert tls_request(port, "mtls.test", "/hello", ctx=client_context(client=deep)).status == 200
    # required: with the client's certificate the request is served ...
    r = tls_request(port, "mtls.test", "/echo", ctx=client_context(client=good))
    assert r.status == 200
    sent = {k.lower(): v for k, v in r.json()["headers"]}
    assert sent["x-verify"] == "SUCCESS"
    # ... without one, or with one the CA did not sign, the handshake fails (TLS 1.2: at once;
    # TLS 1.3: the server's alert arrives with the first read)
    for ctx in (client_context(), client_context(client=stranger),
                client_context(version=ssl.TLSVersion.TLSv1_2)):
        with pytest.raises(failures):
            tls_request(port, "mtls.test", "/hello", ctx=ctx)
    # a Host covered by mTLS must be the verified SNI (as APISIX: a Host whose ssl object has
    # no `client` is not checked) and needs a certificate
    r = tls_request(port, "mtls.test", "/echo", host="skip.test", ctx=client_context(client=good))
    assert r.status == 400
    r = tls_request(port, "mtls.test", "/hello", host="a.test", ctx=client_context(client=good))
    assert r.status == 200
    for host in ("mtls.test", "MTLS.test.", "mtls.test:443"):
        r = tls_request(port, "a.test", "/hello", host=host)
        assert r.status == 400 and b"400 Bad Request" in r.body, host
    # skip_mtls_uri_regex: certificate optional at the handshake, required by URI
    r = tls_request(port, "skip.test", "/hello")
    assert (r.status, r.text) == (200, "hello world\n")
    r = tls_request(port, "skip.test", "/echo")
    assert r.status == 400
    r = tls_request(port, "skip.test", "/echo", ctx=client_context(client=good))
    assert r.status == 200
    with pytest.raises(failures):  # a certificate that does not verify fails the handshake
        tls_request(port, "skip.test", "/hello", ctx=client_context(client=stranger))
    assert "client certificate was not present" in tls_gw.logs()


def test_multi_worker_node_serves_https(tmp_path: Path, certs: dict[str, Issued]) -> None:
    """Supervised workers bind the SSL ports too (SO_REUSEPORT, like the plain ones)."""
    ssl_port = free_port()
    g = GatewayProcess(tmp_path, {"apisix": {"ssl": {"enable": True,
                                                     "listen": [{"port": ssl_port}]}},
                                  "nginx_config": {"worker_processes": 2}})
    g.start({"ssls": [ssl_obj("1", certs["a"], "a.test")], "routes": []})
    try:
        wait_port(ssl_port)
        wait_until(lambda: handshake(ssl_port, "a.test") == certs["a"].der)
        for _ in range(12):
            assert handshake(ssl_port, "a.test") == certs["a"].der
    finally:
        g.stop()


# -- the Admin API (traditional role, embedded store) --------------------------------------------


def admin(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/apisix/admin" + path,
                     body=None if body is None else json.dumps(body), headers={"X-API-KEY": KEY})
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw
    finally:
        conn.close()


def _fails(port: int, sni: str | None) -> bool:
    try:
        handshake(port, sni)
    except (ssl.SSLError, OSError):
        return True
    return False


def test_admin_api_hot_ssl_objects_with_encrypted_keys(
    tmp_path: Path, certs: dict[str, Issued], ca: CA
) -> None:
    admin_port, ssl_port = free_port(), free_port()
    g = GatewayProcess(tmp_path, {
        # default keyring, no fallback
        "apisix": {"ssl": {"enable": True, "listen": [{"port": ssl_port}]}},
        "deployment": {
            "role": "traditional", "role_traditional": {"config_provider": "yaml"},
            "admin": {"admin_listen": {"ip": "127.0.0.1", "port": admin_port},
                      "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}]}},
    })
    g.start({"routes": []})
    try:
        wait_port(admin_port)
        wait_port(ssl_port)
        assert _fails(ssl_port, "a.test")
        pair = certs["a"]
        status, body = admin(admin_port, "PUT", "/ssls/1",
                             {"cert": pair.cert, "key": pair.key, "snis": ["a.test"]})
        assert status == 201, body
        wait_until(lambda: not _fails(ssl_port, "a.test"))
        assert handshake(ssl_port, "a.test") == pair.der
        # stored encrypted with keyring[0]; GET never shows the key
        stored = yaml.safe_load((g.conf / "apisix.yaml").read_text())["ssls"][0]
        assert not stored["key"].startswith("---")
        assert Keyring(DEFAULT_KEYRING).decrypt(stored["key"]) == pair.key
        status, body = admin(admin_port, "GET", "/ssls/1")
        assert status == 200 and "key" not in body["value"] and "keys" not in body["value"]
        status, body = admin(admin_port, "GET", "/ssls")
        assert all("key" not in item["value"] for item in body["list"])
        # changed: the next handshake gets the new certificate
        renewed = ca.issue("a.test", "c.test")
        status, _ = admin(admin_port, "PUT", "/ssls/1", {
            "cert": renewed.cert, "key": renewed.key, "snis": ["a.test", "c.test"]})
        assert status == 200
        wait_until(lambda: handshake(ssl_port, "c.test") == renewed.der)
        assert handshake(ssl_port, "a.test") == renewed.der
        # PATCH of the SNIs alone keeps the (encrypted) key working
        status, _ = admin(admin_port, "PATCH", "/ssls/1", {"snis": ["d.test"]})
        assert status == 200
        wait_until(lambda: _fails(ssl_port, "a.test"))
        assert handshake(ssl_port, "d.test") == renewed.der
        assert _fails(ssl_port, None)  # no SNI and no fallback_sni
        # deleted: handshakes fail again
        assert admin(admin_port, "DELETE", "/ssls/1")[0] == 200
        wait_until(lambda: _fails(ssl_port, "d.test"))
    finally:
        g.stop()


# -- the compiled table (in process) -------------------------------------------------------------


def _snapshot(version: str, ssls: list[dict[str, Any]], **more: Any) -> Snapshot:
    return Snapshot(version, freeze_collections({"ssls": ssls, **more}))


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    reg, errors = load_registry(["fault-injection"], [], {})
    assert not errors
    return reg


def test_table_is_built_incrementally_and_reported(
    certs: dict[str, Issued], registry: PluginRegistry
) -> None:
    settings = TlsSettings(keyring=Keyring(DEFAULT_KEYRING))
    a = ssl_obj("1", certs["a"], "a.test")
    b = encrypt_ssl(ssl_obj("2", certs["b"], "b.test"), settings.keyring)  # stored encrypted
    client = ssl_obj("3", certs["a"], "a.test", type="client")
    s1 = build_state(_snapshot("v1", [a, b, client]), registry, tls=settings)
    table = s1.ssls
    assert isinstance(table, SslTable)
    assert table.lookup("a.test") is table.by_id["1"]
    assert table.lookup("B.test.") is table.by_id["2"]  # the encrypted key was decrypted
    assert table.by_id["2"].context is not None and table.by_id["3"].context is None
    assert table.lookup("c.test") is None
    # one object changes: only it is compiled again, the others keep their entries
    a2 = ssl_obj("1", certs["a"], "a.test", "x.test")
    s2 = build_state(_snapshot("v2", [a2, b, client]), registry, tls=settings,
                     previous=s1.cache)
    assert s2.ssls.by_id["2"] is table.by_id["2"] and s2.ssls.by_id["1"] is not table.by_id["1"]
    assert s2.ssls.lookup("x.test") is s2.ssls.by_id["1"]
    # nothing changed: the same table
    s3 = build_state(_snapshot("v3", [a2, b, client]), registry, tls=settings,
                     previous=s2.cache)
    assert s3.ssls is s2.ssls
    report = certificates_report(s3)
    assert [r["id"] for r in report] == ["1", "2", "3"]
    row = report[1]
    assert row["snis"] == ["b.test"] and row["type"] == "server" and row["status"] == 1
    assert row["serial"] == format(certs["b"].serial, "X")
    assert 88 <= row["days_left"] <= 90
    assert datetime.datetime.fromisoformat(row["not_after"]).tzinfo is not None
    assert report[2]["type"] == "client"


def test_wildcard_and_star_matching(certs: dict[str, Issued]) -> None:
    settings = TlsSettings()
    entries = {
        "w": compile_ssl("w", ssl_obj("w", certs["wild"], "*.wild.test"), settings),
        "s": compile_ssl("s", ssl_obj("s", certs["a"], "*"), settings),
        "bad": compile_ssl("bad", ssl_obj("bad", Issued(certs["a"].cert, certs["b"].key),
                                          "bad.test"), settings),
    }
    table = SslTable(entries)
    assert table.lookup("x.wild.test") is entries["w"]
    assert table.lookup("a.b.wild.test") is entries["s"]  # only `*` covers it
    assert table.lookup("anything") is entries["s"]
    assert entries["bad"].context is None and entries["bad"].error  # mismatched pair
    assert table.lookup("bad.test") is entries["s"]
