"""A large route table for the benchmarks: ``apisix.yaml`` with a mix of route kinds.

Route ``i`` (0 <= i < n) is, by ``i % 4``:

* 0 ``exact``:  ``uri: /r/<i>/exact``
* 1 ``prefix``: ``uri: /r/<i>/*``
* 2 ``host``:   ``uri: /r/<i>/*`` with ``hosts: [h<i>.example.com]``
* 3 ``vars``:   ``uri: /r/<i>/*`` with ``vars: [["http_x_tenant", "==", "t<i>"]]``

Every third route also has ``methods: [GET, HEAD]``. Even routes carry an inline upstream, odd
ones refer to one of ``UPSTREAMS`` upstream objects (``upstream_id``); every upstream points at
the benchmark's upstream server. :func:`hit` gives the request that lands on the route of a kind
nearest the middle of the table.

The file is written in the layout sixgate's embedded store writes (one JSON object per line,
which YAML reads as a flow mapping), so it loads without a full YAML parse. Standard library
only.
"""

from __future__ import annotations

import json
from typing import Any

KINDS = ("exact", "prefix", "host", "vars")
UPSTREAMS = 10
PROBE_ID = "bench-probe"
PROBE_URI = "/bench-probe"


def route(i: int, upstream: str) -> dict[str, Any]:
    kind = KINDS[i % 4]
    r: dict[str, Any] = {"id": f"r{i}"}
    if kind == "exact":
        r["uri"] = f"/r/{i}/exact"
    else:
        r["uri"] = f"/r/{i}/*"
    if kind == "host":
        r["hosts"] = [f"h{i}.example.com"]
    elif kind == "vars":
        r["vars"] = [["http_x_tenant", "==", f"t{i}"]]
    if i % 3 == 0:
        r["methods"] = ["GET", "HEAD"]
    if i % 2 == 0:
        r["upstream"] = {"type": "roundrobin", "nodes": {upstream: 1}}
    else:
        r["upstream_id"] = f"u{i % UPSTREAMS}"
    return r


def hit_index(n: int, kind: str) -> int:
    """The route of ``kind`` nearest the middle of an ``n``-route table."""
    k = KINDS.index(kind)
    i = (n // 2) - (n // 2) % 4 + k
    return i if i < n else max(k, i - 4)


def hit(n: int, kind: str) -> tuple[str, dict[str, str]]:
    """(path, extra request headers) of a request served by the ``kind`` route in the middle."""
    i = hit_index(n, kind)
    if kind == "exact":
        return f"/r/{i}/exact", {}
    headers = {"host": {"Host": f"h{i}.example.com"},
               "vars": {"X-Tenant": f"t{i}"}}.get(kind, {})
    return f"/r/{i}/api/hello", headers


def probe_route(token: str) -> dict[str, Any]:
    """A route answering ``token`` itself (fault-injection abort): shows when a change is live."""
    return {"id": PROBE_ID, "uri": PROBE_URI,
            "plugins": {"fault-injection": {"abort": {"http_status": 200, "body": token}}}}


def apisix_yaml(n: int, upstream: str, probe: str | None = None,
                extra: list[dict[str, Any]] | None = None) -> str:
    """The standalone file: ``n`` mixed routes (+ the probe route when ``probe`` is a token,
    + ``extra`` routes), their upstreams, ``#END``."""
    lines = ["# bench/routes_gen.py: one item per line (JSON objects are YAML flow mappings)",
             "upstreams:"]
    for u in range(UPSTREAMS):
        lines.append("  - " + json.dumps({"id": f"u{u}", "type": "roundrobin",
                                          "nodes": {upstream: 1}}))
    lines.append("routes:")
    lines.extend("  - " + json.dumps(route(i, upstream)) for i in range(n))
    for r in extra or ():
        lines.append("  - " + json.dumps(r))
    if probe is not None:
        lines.append("  - " + json.dumps(probe_route(probe)))
    lines.append("#END")
    return "\n".join(lines) + "\n"


def with_probe(text: str, token: str) -> str:
    """``text`` (from :func:`apisix_yaml` with a probe) with the probe route answering ``token``:
    one line changed, everything else byte-identical."""
    head, _, rest = text.rpartition(f'  - {{"id": "{PROBE_ID}"')
    line_end = rest.index("\n")
    return head + "  - " + json.dumps(probe_route(token)) + rest[line_end:]
