"""Access log (format, off switch, rotation) and multi-worker serving with restarts."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from kernel.accesslog import compile_format
from tests.support.gateway import GatewayProcess, child_pids, wait_until


def node(up: Any) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}


def test_compile_format() -> None:
    assert compile_format('$remote_addr - [${time_local}] "$request"') == [
        ("", "remote_addr"), (" - [", "time_local"), ('] "', "request"), ('"', None),
    ]


def test_default_access_log_line(tmp_path: Path, upstream: Any) -> None:
    g = GatewayProcess(tmp_path)
    g.start({"routes": [{"id": 1, "uri": "/hello", "upstream": node(upstream)}]})
    try:
        assert g.get("/hello?x=1", headers={"User-Agent": "ua-test", "Referer": "http://r/"}).status == 200
        assert g.get("/missing").status == 404
        log = g.conf / "logs" / "access.log"
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 2, timeout=5)
        first, second = log.read_text().splitlines()[:2]
        pattern = (
            r'^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
            rf'127\.0\.0\.1:{g.port} "GET /hello\?x=1 HTTP/1\.1" 200 12 \d+\.\d{{3}} '
            rf'"http://r/" "ua-test" 127\.0\.0\.1:{upstream.port} 200 \d+\.\d{{3}} '
            rf'"http://127\.0\.0\.1:{g.port}/hello\?x=1" "[0-9a-f]{{32}}"$'
        )
        assert re.match(pattern, first), first
        assert '"GET /missing HTTP/1.1" 404 36' in second
    finally:
        g.stop()


def test_access_log_reopened_after_rotation(tmp_path: Path, upstream: Any) -> None:
    g = GatewayProcess(tmp_path)
    g.start({"routes": [{"id": 1, "uri": "/hello", "upstream": node(upstream)}]})
    try:
        log = g.conf / "logs" / "access.log"
        g.get("/hello")
        wait_until(lambda: log.exists() and log.read_text().strip(), timeout=5)
        os.rename(log, log.with_suffix(".log.1"))
        time.sleep(1.5)
        g.get("/hello?after=rotation")
        wait_until(lambda: log.exists() and "after=rotation" in log.read_text(), timeout=5)
        assert "after=rotation" not in log.with_suffix(".log.1").read_text()
    finally:
        g.stop()


def test_access_log_off(tmp_path: Path, upstream: Any) -> None:
    g = GatewayProcess(tmp_path, {"nginx_config": {"http": {"enable_access_log": False}}})
    g.start({"routes": [{"id": 1, "uri": "/hello", "upstream": node(upstream)}]})
    try:
        assert g.get("/hello").status == 200
        time.sleep(0.5)
        assert not (g.conf / "logs" / "access.log").exists()
    finally:
        g.stop()


def test_error_log_level_and_file(tmp_path: Path, upstream: Any) -> None:
    g = GatewayProcess(tmp_path, {"nginx_config": {"error_log_level": "error"}})
    g.start({"routes": [{"id": 1, "uri": "/hello", "upstream": node(upstream)}]})
    try:
        g.get("/hello")
        err = (g.conf / "logs" / "error.log").read_text()
        assert "[INFO]" not in err and "[WARNING]" not in err
    finally:
        g.stop()



def test_two_workers_share_the_port_and_restart(tmp_path: Path, upstream: Any) -> None:
    g = GatewayProcess(tmp_path, {"nginx_config": {"worker_processes": 2}})
    g.start({"routes": [{"id": 1, "uri": "/hello", "upstream": node(upstream)}]})
    try:
        assert g.proc is not None
        workers = wait_until(lambda: len(child_pids(g.proc.pid)) == 2 and child_pids(g.proc.pid))
        assert all(g.get("/hello").status == 200 for _ in range(20))
        os.kill(workers[0], signal.SIGKILL)
        replaced = wait_until(
            lambda: (kids := child_pids(g.proc.pid)) and len(kids) == 2
            and workers[0] not in kids and kids,
            timeout=10,
        )
        assert workers[1] in replaced
        wait_until(lambda: all(g.get("/hello").status == 200 for _ in range(10)), timeout=10)
        assert g.stop() == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in replaced)
    finally:
        g.stop()
