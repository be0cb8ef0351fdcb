"""TLS toward upstreams (spec §5.1 ``scheme: https`` + ``tls``, §5.4 SNI, §5.7) through a real
``sixgate start`` process and real HTTPS upstreams: verification against
``apisix.ssl.ssl_trusted_certificate``, SNI following the Host sent, mTLS with an inline
client certificate or a ``type: client`` ssl object (``client_cert_id``), hot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.tls import CA, TlsUpstream
from tests.support.upstream import free_port


@pytest.fixture(scope="module")
def cas() -> dict[str, CA]:
    return {"servers": CA("upstream servers"), "other": CA("someone else"),
            "clients": CA("upstream clients")}


@pytest.fixture(scope="module")
def upstreams(cas: dict[str, CA]) -> Iterator[dict[str, TlsUpstream]]:
    servers = cas["servers"]
    ups = {
        "plain": TlsUpstream(servers.issue("upstream.test", "127.0.0.1")).start(),
        "foreign": TlsUpstream(cas["other"].issue("upstream.test", "127.0.0.1")).start(),
        "mtls": TlsUpstream(servers.issue("mtls-upstream.test"), client_ca=cas["clients"]).start(),
    }
    yield ups
    for up in ups.values():
        up.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, cas: dict[str, CA]) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("uptls")
    bundle = workdir / "trusted.pem"
    bundle.write_text(cas["servers"].pem)
    g = GatewayProcess(workdir, {"apisix": {"ssl": {
        "listen": [{"port": free_port()}], "ssl_trusted_certificate": str(bundle)}}})
    g.start({"routes": []})
    yield g
    g.stop()


def https(up: TlsUpstream, **extra: Any) -> dict[str, Any]:
    return {"type": "roundrobin", "scheme": "https", "nodes": {f"127.0.0.1:{up.port}": 1},
            **extra}


def route(rid: str, upstream: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"id": rid, "uri": f"/{rid}/*", "plugins": {"proxy-rewrite": {
        "regex_uri": [f"^/{rid}/(.*)", "/$1"]}}, **extra}
    if upstream is not None:
        r["upstream"] = upstream
    return r


def test_verify_and_sni(gw: GatewayProcess, upstreams: dict[str, TlsUpstream]) -> None:
    plain, foreign = upstreams["plain"], upstreams["foreign"]
    rewrite = {"pass_host": "rewrite", "upstream_host": "upstream.test"}
    gw.apply({"routes": [
        route("noverify", https(foreign)),  # tls.verify false (default): not checked
        route("ok", https(plain, tls={"verify": True}, **rewrite)),
        route("ip", https(plain, tls={"verify": True}, pass_host="node")),  # IP SAN
        route("badname", https(plain, tls={"verify": True}, pass_host="rewrite",
                               upstream_host="other.test")),
        route("badca", https(foreign, tls={"verify": True}, **rewrite)),
        route("pass", https(plain, tls={"verify": True})),  # SNI = the client's Host
    ]})
    r = gw.get("/noverify/x")
    assert (r.status, r.text) == (200, f"tls {foreign.port} /x\n")
    r = gw.get("/ok/info")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    assert '"sni": "upstream.test"' in r.text  # SNI follows the Host sent (upstream_host)
    assert gw.get("/ip/x").status == 200
    for path in ("/badname/x", "/badca/x"):  # verification failure: 502
        r = gw.get(path)
        assert r.status == 502, (path, r)
        assert r.headers.get("x-apisix-upstream-status") == "502"
    assert gw.get("/pass/info", headers={"Host": "upstream.test:9080"}).status == 200
    assert plain.snis[-1] == "upstream.test"  # the Host without its port
    assert gw.get("/pass/info", headers={"Host": "elsewhere.test"}).status == 502
    assert "CERTIFICATE_VERIFY_FAILED" in gw.logs()


def test_mtls_to_the_upstream(gw: GatewayProcess, upstreams: dict[str, TlsUpstream],
                              cas: dict[str, CA]) -> None:
    up = upstreams["mtls"]
    alice = cas["clients"].issue("alice", client=True)
    bob = cas["clients"].issue("bob", client=True)
    server_cert = cas["servers"].issue("gw.test")
    ssls = [
        {"id": "c1", "type": "client", "cert": alice.cert, "key": alice.key},
        {"id": "srv", "cert": server_cert.cert, "key": server_cert.key, "snis": ["gw.test"]},
    ]
    gw.apply({
        "ssls": ssls,
        "upstreams": [{"id": "byid", **https(up, tls={"client_cert_id": "c1"})}],
        "routes": [
            route("none", https(up)),
            route("inline", https(up, tls={"client_cert": bob.cert, "client_key": bob.key})),
            route("byid", upstream_id="byid"),
            route("inlineid", https(up, tls={"client_cert_id": "c1"})),
            route("missing", https(up, tls={"client_cert_id": "nope"})),
            route("servertype", https(up, tls={"client_cert_id": "srv"})),
        ],
    })
    assert gw.get("/none/info").status == 502  # the upstream wants a certificate
    r = gw.get("/inline/info")
    assert r.status == 200 and '"client": "bob"' in r.text
    for rid in ("byid", "inlineid"):
        r = gw.get(f"/{rid}/info")
        assert r.status == 200 and '"client": "alice"' in r.text, (rid, r)
    for rid in ("missing", "servertype"):  # spec §5.7: 502 without trying
        assert gw.get(f"/{rid}/info").status == 502
    assert "ssl id [nope] not exits" in gw.logs()
    # the client ssl object changes: upstreams naming it present the new certificate
    ssls[0] = {"id": "c1", "type": "client", "cert": bob.cert, "key": bob.key}
    by_id = {"id": "byid", **https(up, tls={"client_cert_id": "c1"})}
    gw.apply({"ssls": ssls, "upstreams": [by_id],
              "routes": [route("byid", upstream_id="byid"),
                         route("inlineid", https(up, tls={"client_cert_id": "c1"}))]})
    for rid in ("byid", "inlineid"):
        r = gw.get(f"/{rid}/info")
        assert r.status == 200 and '"client": "bob"' in r.text, (rid, r)


def test_incremental_build_follows_client_ssl_changes(tmp_path: Path, cas: dict[str, CA]) -> None:
    """In process: a change of a ``type: client`` ssl object rebuilds exactly the upstreams
    (by id, inline in routes and services) that name it."""
    from kernel.plugins.loader import load_registry
    from kernel.state import build_state
    from kernel.store.base import Snapshot, freeze_collections

    registry, errors = load_registry([], [], {})
    assert not errors
    alice = cas["clients"].issue("alice", client=True)
    bob = cas["clients"].issue("bob", client=True)
    up = {"type": "roundrobin", "scheme": "https", "nodes": {"127.0.0.1:1": 1},
          "tls": {"client_cert_id": "c"}}
    plain = {"type": "roundrobin", "scheme": "https", "nodes": {"127.0.0.1:2": 1}}

    def snap(version: str, pair: Any) -> Snapshot:
        return Snapshot(version, freeze_collections({
            "ssls": [{"id": "c", "type": "client", "cert": pair.cert, "key": pair.key}],
            "upstreams": [{"id": "u", **up}, {"id": "p", **plain}],
            "services": [{"id": "s", "upstream": up}],
            "routes": [{"id": "r1", "uri": "/1", "upstream_id": "u"},
                       {"id": "r2", "uri": "/2", "upstream": up},
                       {"id": "r3", "uri": "/3", "service_id": "s"},
                       {"id": "r4", "uri": "/4", "upstream_id": "p"}],
        }))

    first = build_state(snap("1", alice), registry)
    assert first.upstreams["u"].tls_error is None
    second = build_state(snap("2", bob), registry, previous=first.cache)
    assert second.upstreams["u"] is not first.upstreams["u"]
    assert second.upstreams["p"] is first.upstreams["p"]
    for rid in ("r1", "r2", "r3"):
        assert second.routes[rid] is not first.routes[rid], rid
        assert second.routes[rid].upstream.ssl_context is not (  # type: ignore[union-attr]
            first.routes[rid].upstream.ssl_context), rid  # type: ignore[union-attr]
    assert second.routes["r4"] is first.routes["r4"]
    gone = Snapshot("3", freeze_collections({**{k: list(v) for k, v in snap("x", bob)
                                                .collections.items()}, "ssls": []}))
    third = build_state(gone, registry, previous=second.cache)
    assert third.upstreams["u"].tls_error is not None
    assert third.routes["r2"].upstream.tls_error is not None  # type: ignore[union-attr]
