"""``sixgate``: start, stop, reload, validate, plugins status, version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kernel import APISIX_VERSION, __version__
from kernel import config as config_mod
from kernel.config import Config, ConfigError, load_config
from kernel.store.resources import StoreUnavailable

log = logging.getLogger("sixgate")



def _fail(message: str, code: int = 1) -> int:
    print(f"sixgate: {message}", file=sys.stderr)
    return code


def _load(path: str | None) -> Config:
    return load_config(path)


def _check_mode(cfg: Config) -> str | None:
    from kernel.store.factory import mode_problem

    return mode_problem(cfg)


def _pid_file(cfg: Config) -> Path:
    return cfg.resolve(cfg.get("apisix.pid_file") or "logs/sixgate.pid")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its parent's wait() counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


# --- start ----------------------------------------------------------------------------------
def cmd_start(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
    except ConfigError as err:
        return _fail(str(err))
    problem = _check_mode(cfg)
    if problem:
        return _fail(problem)
    from kernel.logs import setup_logging

    error_log = cfg.get("nginx_config.error_log")
    setup_logging(
        str(cfg.get("nginx_config.error_log_level") or "warn"),
        cfg.resolve(error_log) if error_log else None,
    )
    pid_file = _pid_file(cfg)
    running = _read_pid(pid_file)
    if running is not None and running != os.getpid():
        return _fail(f"already running (pid {running}, pid file {pid_file})")
    from kernel.store.factory import admin_enabled, mode

    if admin_enabled(cfg):
        from kernel.admin_key import check_admin_keys

        try:
            cfg = check_admin_keys(cfg).config
        except ConfigError as err:
            return _fail(str(err))
    addresses = (
        config_mod.listen_addresses(cfg) + config_mod.ssl_listen_addresses(cfg)  # + HTTPS
        if mode(cfg)[0] != "control_plane" else []
    )
    if admin_enabled(cfg):
        listen = cfg.get("deployment.admin.admin_listen") or {}
        addresses = [*addresses, (str(listen.get("ip", "0.0.0.0")), int(listen.get("port", 9180)))]
    try:
        _probe_ports(addresses)
    except OSError as err:
        return _fail(f"cannot listen: {err}")
    from kernel.control import listen_problem

    problem = listen_problem(cfg)  # the control API (worker 0): port conflicts, taken address
    if problem:
        return _fail(problem)
    from kernel.exporter import port_conflict

    problem = port_conflict(cfg)  # the prometheus export server (kernel/exporter.py)
    if problem:
        return _fail(problem)
    instance = config_mod.instance_id(cfg)
    workers = config_mod.worker_processes(cfg)
    from kernel.counters import NODE_COUNTERS, zone_sizes

    try:  # node-wide shared counters: made before the workers fork, so all of them share them
        NODE_COUNTERS.prepare(zone_sizes(cfg.get("nginx_config.http")))
    except ValueError as err:
        return _fail(str(err))
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    listen = ", ".join(f"{h}:{p}" for h, p in addresses)
    print(
        f"sixgate {__version__} (APISIX {APISIX_VERSION} compatible) starting: config "
        f"{cfg.path}, {workers} worker(s), listening on {listen}, instance {instance}",
        file=sys.stderr,
        flush=True,
    )
    try:
        if workers > 1:
            return _supervise(cfg, workers)
        return _run_worker(cfg)
    finally:
        if _read_pid(pid_file) in (os.getpid(), None):
            with contextlib.suppress(OSError):
                pid_file.unlink()


def _probe_ports(addresses: list[tuple[str, int]]) -> None:
    from kernel.gateway import bind_socket

    socks = []
    try:
        for host, port in addresses:
            socks.append(bind_socket(host, port))
    finally:
        for s in socks:
            s.close()


def _install_loop() -> str:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _run_worker(cfg: Config, slot: int = 0, supervised: bool = False) -> int:
    loop_name = _install_loop()
    log.info("worker %d (slot %d) starting (%s)", os.getpid(), slot, loop_name)
    return asyncio.run(_serve(cfg, slot, supervised))


async def _serve(cfg: Config, slot: int = 0, supervised: bool = False) -> int:
    from kernel.control import control_address
    from kernel.gateway import Gateway

    if TYPE_CHECKING:
        from kernel.control import ControlServer

    gateway = Gateway(cfg, slot=slot, supervised=supervised)
    control: ControlServer | None = None
    try:
        await gateway.start()
        if slot == 0 and control_address(cfg) is not None:
            # one process serves the control port, like the Admin API (aiohttp is loaded here)
            from kernel.control import start_control

            control = await start_control(gateway)
    except (OSError, StoreUnavailable) as err:
        log.error("cannot start: %s", err)
        await gateway.stop(0)
        return 1
    from kernel.exporter import start_local_export

    # prometheus export: here for a single worker; a supervisor serves it for several
    export = None if supervised else start_local_export(cfg, gateway, asyncio.get_running_loop())
    # Everything loaded so far lives for the whole run: keep it out of the cyclic collector's
    # scans, and collect young objects less often (requests allocate many short-lived ones).
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 20)
    state = gateway.state
    log.warning("sixgate ready: %d routes (config %s)", len(state.routes), state.version)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    refreshing: set[asyncio.Task[None]] = set()

    def reload() -> None:
        log.warning("SIGHUP: reloading config.yaml plugins and the standalone file")
        try:
            new_cfg = load_config(cfg.path)
        except ConfigError as err:
            log.error("reload refused: %s", err)
            return
        gateway.reload_plugins(new_cfg, trigger="signal")
        if not gateway.plugins_ok():
            return  # refused: nothing changed (see `sixgate plugins status`)
        refreshing.add(loop.create_task(gateway.after_plugin_reload()))
        for task in [t for t in refreshing if t.done()]:
            refreshing.discard(task)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    timeout = config_mod.parse_duration(cfg.get("nginx_config.worker_shutdown_timeout") or "240s")
    log.warning("stopping: waiting up to %.0fs for in-flight requests", timeout)
    await gateway.stop(timeout)
    if control is not None:
        await control.stop()
    if export is not None:
        export.stop()
    return 0


def _supervise(cfg: Config, workers: int) -> int:
    """Fork ``workers`` processes sharing the ports (SO_REUSEPORT); restart any that dies."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = _run_worker(cfg, slot, supervised=True)
            finally:
                os._exit(code)
        children[pid] = slot

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    from kernel.exporter import start_node_export

    # prometheus export for the whole node (kernel/exporter.py), before the workers fork
    export = start_node_export(cfg, lambda: list(children))
    for slot in range(workers):
        spawn(slot)
    failures: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, -1)
        if export is not None:
            export.worker_exited(pid)  # keep what it counted (kernel/metrics.py)
        if slot < 0 or stopping:
            continue
        now = time.monotonic()
        failures = [t for t in failures if now - t < 10] + [now]
        if len(failures) > 5 * workers:
            log.error("workers keep dying; giving up")
            forward(signal.SIGTERM, None)
            stopping = True
            continue
        log.error("worker %d exited (status %d); restarting", pid, status)
        spawn(slot)
    if export is not None:
        export.stop()
    return 0


# --- stop / reload --------------------------------------------------------------------------
def _signal_running(args: argparse.Namespace, sig: int) -> tuple[int, Path] | int:
    try:
        cfg = _load(args.config)
    except ConfigError as err:
        return _fail(str(err))
    pid_file = _pid_file(cfg)
    pid = _read_pid(pid_file)
    if pid is None:
        return _fail(f"not running (no live pid in {pid_file})")
    os.kill(pid, sig)
    return pid, pid_file


def cmd_stop(args: argparse.Namespace) -> int:
    result = _signal_running(args, signal.SIGTERM)
    if isinstance(result, int):
        return result
    pid, _ = result
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"sixgate (pid {pid}) stopped", file=sys.stderr)
            return 0
        time.sleep(0.1)
    return _fail(f"pid {pid} still running after {args.timeout:.0f}s")


def cmd_reload(args: argparse.Namespace) -> int:
    result = _signal_running(args, signal.SIGHUP)
    if isinstance(result, int):
        return result
    print(f"sixgate (pid {result[0]}) reloading", file=sys.stderr)
    return 0


# --- validate -------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
    except ConfigError as err:
        print(f"{err}", file=sys.stderr)
        return 1
    print(f"{cfg.path}: ok")
    problem = _check_mode(cfg)
    if problem:
        print(f"{cfg.path}: {problem}", file=sys.stderr)
        return 1
    from kernel.gateway import standalone_path
    from kernel.plugins.loader import load_registry
    from kernel.state import validate_snapshot
    from kernel.store.yaml_file import YamlFileStore

    dirs = [cfg.resolve(d) for d in (cfg.get("apisix.plugin_dirs") or [])]
    registry, errors = load_registry(
        [str(p) for p in cfg.get("plugins") or []], dirs, cfg.get("plugin_attr") or {}, init=False
    )
    for message in errors:
        print(f"{cfg.path}: plugins: {message}", file=sys.stderr)
    path = standalone_path(cfg)
    store = YamlFileStore(path, validate=lambda s: validate_snapshot(s, registry))
    problems = store.check()
    for p in problems:
        print(str(p), file=sys.stderr)
    if problems or errors:
        print(f"{len(problems) + len(errors)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


# --- plugins status -------------------------------------------------------------------------
def cmd_plugins_status(args: argparse.Namespace) -> int:
    """Show each worker's loaded plugins and its last plugin (re)load, from the status files the
    gateway writes next to its pid file. Exit status 1 when a worker's last reload was refused."""
    import json

    from kernel.gateway import Gateway
    from kernel.plugins.reload import format_status, read_status_files

    try:
        cfg = _load(args.config)
    except ConfigError as err:
        return _fail(str(err))
    logs_dir = Gateway.logs_dir(cfg)
    docs = [d for d in read_status_files(logs_dir) if _alive(int(d.get("pid") or 0))]
    if not docs:
        return _fail(f"no running gateway wrote a plugin status in {logs_dir}")
    if args.json:
        print(json.dumps(docs, indent=2))
    else:
        print(format_status(docs))
    return 0 if all((d.get("last") or {}).get("ok", True) for d in docs) else 1


def cmd_version(_: argparse.Namespace) -> int:
    print(f"sixgate {__version__} (APISIX {APISIX_VERSION} compatible)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sixgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", help="config.yaml (default: conf/config.yaml)")
        return p

    with_config(sub.add_parser("start", help="run the gateway in the foreground")).set_defaults(
        func=cmd_start
    )
    stop = with_config(sub.add_parser("stop", help="stop a running gateway (pid file)"))
    stop.add_argument("--timeout", type=float, default=30.0)
    stop.set_defaults(func=cmd_stop)
    with_config(sub.add_parser("reload", help="reload config (SIGHUP)")).set_defaults(
        func=cmd_reload
    )
    with_config(
        sub.add_parser("validate", help="check config.yaml and the standalone file")
    ).set_defaults(func=cmd_validate)
    plugins = sub.add_parser("plugins", help="plugin commands").add_subparsers(
        dest="plugins_command", required=True
    )
    status = with_config(plugins.add_parser(
        "status", help="loaded plugins and the last (re)load of a running gateway"
    ))
    status.add_argument("--json", action="store_true", help="print the raw status documents")
    status.set_defaults(func=cmd_plugins_status)
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
