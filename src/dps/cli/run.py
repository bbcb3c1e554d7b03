"""``dps run`` (the all-in-one under a supervisor) and ``dps alpha|beta|gamma|control``.

``dps run`` starts control, gamma, beta and alpha as child processes (the manual's G.2 order),
shows a progress line fed by the control service's durable accounting, and once the input is
drained — every enabled source exhausted, both stage queues empty, every stage idle — prints the
summary table. It keeps serving the admin APIs until Ctrl-C, or exits 0 with ``--once``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dps.admin.tls import TlsSetupError, base_url, client_verify
from dps.config import ConfigError, load_config
from dps.core.logging import configure_logging
from dps.runtime.module import resolve_data_dir

MODULES = {
    "alpha": "dps.alpha.module:AlphaModule",
    "beta": "dps.beta.module:BetaModule",
    "gamma": "dps.gamma.module:GammaModule",
    "control": "dps.control.module:ControlModule",
}
START_ORDER = ("control", "gamma", "beta", "alpha")
#: Seconds between polls of the accounting, and how many quiet polls in a row mean drained.
#: The accounting counts durable rows, so it is not free: poll at a pace that costs the
#: pipeline nothing measurable.
POLL_SECONDS = 1.0
QUIET_POLLS = 2


def _print_config_error(exc: ConfigError) -> None:
    err = Console(stderr=True)
    err.print("[bold red]The configuration is not valid:[/]")
    for issue in exc.issues:
        err.print(f"  {issue}", markup=False, highlight=False)


def run_module(
    module: str, config_dir: Path, data_dir: Path | None, host: str | None, port: int
) -> int:
    """Run one module in this process until SIGTERM/SIGINT."""
    path, _, cls_name = MODULES[module].partition(":")
    cls = getattr(importlib.import_module(path), cls_name)
    try:
        instance = cls(config_dir, data_dir=data_dir)
    except ConfigError as exc:
        _print_config_error(exc)
        return 2
    code: int = instance.run(host=host, port=port)
    return code


def admin_ports(config: Any, base: int | None) -> dict[str, int]:
    if base is not None:
        return {name: base + i for i, name in enumerate(("control", "alpha", "beta", "gamma"))}
    ports = config.pipeline.admin.ports
    return {
        "control": ports.control,
        "alpha": ports.alpha,
        "beta": ports.beta,
        "gamma": ports.gamma,
    }


def run_all(
    config_dir: Path, data_dir: Path | None, once: bool, json_out: bool, port_base: int | None
) -> int:
    """The all-in-one (see the module docstring); returns the exit code."""
    from dps.runtime.supervisor import ChildSpec, Supervisor

    try:
        config = load_config(config_dir)
    except ConfigError as exc:
        _print_config_error(exc)
        return 2
    data = resolve_data_dir(config, data_dir)
    data.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    # On a terminal the progress line and the summary are what an operator reads: the JSON logs
    # go to files. Elsewhere (CI, systemd, containers) they go to stderr as usual.
    log_dir = data / "logs" if console.is_terminal else None
    if log_dir is not None:
        log_dir.mkdir(exist_ok=True)
        log_stream = (log_dir / "supervisor.log").open("a")
        configure_logging("supervisor", config.pipeline.logging.level, stream=log_stream)
    else:
        configure_logging("supervisor", config.pipeline.logging.level)
    host = config.pipeline.admin.bind
    ports = admin_ports(config, port_base)
    # The control service reaches the modules through their admin APIs at these URLs (https
    # with admin.tls); the readiness probe and the progress poll verify the same certificate.
    urls = {name: base_url(config, host, port) for name, port in ports.items()}
    try:
        verify = client_verify(config)
    except TlsSetupError as exc:
        console.print(f"[bold red]The pipeline did not start:[/] {exc}")
        return 2
    admin_urls = json.dumps(urls)
    env = {**os.environ, "DPS_DATA_DIR": str(data), "DPS_ADMIN_URLS": admin_urls}
    children = [
        ChildSpec(
            name=name,
            argv=[
                sys.executable,
                "-m",
                "dps",
                name,
                str(config_dir),
                "--data-dir",
                str(data),
                "--port",
                str(ports[name]),
                "--host",
                host,
            ],
            env=env,
            ready_url=f"{urls[name]}/admin/ready",
            ready_verify=verify,
            log_path=str(log_dir / f"{name}.log") if log_dir else None,
        )
        for name in START_ORDER
    ]
    supervisor = Supervisor(children)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with console.status("Starting control, gamma, beta and alpha..."):
            supervisor.start()
    except Exception as exc:
        console.print(f"[bold red]The pipeline did not start:[/] {exc}")
        supervisor.stop()
        return 1
    console.print(
        f"Pipeline [bold]{config.pipeline.name}[/] running; data in {data}; admin APIs: "
        + ", ".join(f"{n} {u}" for n, u in urls.items())
    )
    if log_dir is not None:
        console.print(f"Logs: {log_dir}/<module>.log")
    acc: dict[str, Any] = {}
    try:
        token = config.pipeline.admin.client_token()
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(timeout=5.0, headers=auth, verify=verify) as client:
            drained = False
            with Live(
                Text("Starting..."), console=console, refresh_per_second=4, transient=True
            ) as live:
                quiet = 0
                while not stop.is_set():
                    acc = _poll(client, urls) or acc
                    if acc:
                        live.update(_progress(acc, supervisor))
                        quiet = quiet + 1 if acc.get("_quiet") else 0
                        if quiet >= QUIET_POLLS:
                            drained = True
                            break
                    stop.wait(POLL_SECONDS)
            if drained:
                _summary(acc, console=Console(), json_out=json_out)
                if not once:
                    console.print("Input drained. Admin APIs stay up; Ctrl-C to stop.")
                    while not stop.wait(0.5):
                        pass
    finally:
        supervisor.stop()
    return 0 if drained or not once else 1


def _poll(client: httpx.Client, urls: dict[str, str]) -> dict[str, Any] | None:
    """The control service's accounting, with ``_quiet`` set when every stage is idle."""
    try:
        acc: dict[str, Any] = client.get(f"{urls['control']}/api/accounting").json()
        idle = all(
            client.get(f"{urls[name]}/admin/status").json().get("idle") is True
            for name in ("alpha", "beta", "gamma")
        )
    except (httpx.HTTPError, ValueError):
        return None
    acc["_quiet"] = idle and not any(acc.get("in_flight", {}).values())
    return acc


def _progress(acc: dict[str, Any], supervisor: Any) -> Text:
    delivered = sum(acc.get("delivered", {}).values())
    restarts = sum(getattr(supervisor, "restarts", {}).values())
    line = (
        f"ingested {acc['ingested']:,}  duplicates {acc['duplicates']:,}  "
        f"delivered {delivered:,}  dlq {acc['dlq_total']:,}  "
        f"in flight {sum(acc['in_flight'].values()):,}"
    )
    if restarts:
        line += f"  restarts {restarts}"
    return Text(line)


def summary_record(acc: dict[str, Any]) -> dict[str, Any]:
    """The accounting as printed by ``--json``, with the balance check."""
    dlq = {m: acc.get("dlq", {}).get(m, 0) for m in ("alpha", "beta", "gamma")}
    delivered_records = acc.get("delivered_records", 0)
    balanced = acc["ingested"] == delivered_records + sum(dlq.values()) + acc["duplicates"]
    return {
        "ingested": acc["ingested"],
        "validated": acc["validated"],
        "duplicates": acc["duplicates"],
        "transformed": acc["transformed"],
        "delivered": acc.get("delivered", {}),
        "delivered_records": delivered_records,
        "dlq": dlq,
        "adds_up": balanced,
    }


def _summary(acc: dict[str, Any], *, console: Console, json_out: bool) -> None:
    record = summary_record(acc)
    table = Table(title="Pipeline accounting", show_header=True)
    table.add_column("stage")
    table.add_column("count", justify="right")
    table.add_row("ingested", f"{record['ingested']:,}")
    table.add_row("duplicates dropped", f"{record['duplicates']:,}")
    table.add_row("dlq alpha", f"{record['dlq']['alpha']:,}")
    table.add_row("validated", f"{record['validated']:,}")
    table.add_row("dlq beta", f"{record['dlq']['beta']:,}")
    table.add_row("transformed", f"{record['transformed']:,}")
    for dest, count in sorted(record["delivered"].items()):
        table.add_row(f"delivered to {dest}", f"{count:,}")
    table.add_row("dlq gamma", f"{record['dlq']['gamma']:,}")
    console.print(table)
    verdict = "adds up" if record["adds_up"] else "DOES NOT add up"
    console.print(
        f"ingested {record['ingested']:,} = delivered {record['delivered_records']:,} + "
        f"dlq {sum(record['dlq'].values()):,} + duplicates {record['duplicates']:,}: {verdict}"
    )
    if json_out:
        print(json.dumps(record, sort_keys=True), flush=True)
