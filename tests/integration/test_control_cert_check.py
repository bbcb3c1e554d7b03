"""weekly_cert_check against real TLS servers started here with short-lived certificates."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.integration.tls_certs import make_cert

from dps.config import load_config
from dps.control.jobs import JOBS, JobContext
from dps.control.jobs.certs import weekly_cert_check
from dps.control.modules import ModuleClient
from dps.state import StateStore, open_state


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the job's probe closes right after the handshake: not an error here


class TlsServer:
    """An HTTPS server on 127.0.0.1 and a free port, presenting a certificate of ``days``."""

    def __init__(self, folder: Path, name: str, days: float) -> None:
        cert, key = make_cert(folder, name, days=days)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.httpd = _QuietServer(("127.0.0.1", 0), _Ok)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, TlsServer]]:
    started = {
        "short": TlsServer(tmp_path / "certs", "short", days=3),
        "soon": TlsServer(tmp_path / "certs", "soon", days=20),
        "long": TlsServer(tmp_path / "certs", "long", days=200),
    }
    yield started
    for server in started.values():
        server.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    opened = open_state("sqlite", {"path": str(tmp_path / "state.db")}, tmp_path)
    yield opened
    opened.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def http_destination(root: Path, dest_id: str, url: str) -> None:
    folder = root / "gamma" / "destinations"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dest_id}.yaml").write_text(
        f"destination_id: {dest_id}\ndestination_type: http\nenabled: true\n"
        f"connection:\n  url: {url}\n"
    )


def run_job(tmp_path: Path, store: StateStore, urls: dict[str, str]) -> tuple[bool, str, dict]:
    config = load_config(tmp_path / "config")
    client = ModuleClient(urls, timeout=5)
    ctx = JobContext("weekly_cert_check", "run-1", store, client, config, config.root, tmp_path)
    try:
        result = weekly_cert_check(ctx)
    finally:
        client.close()
    reports = tmp_path / "reports" / "weekly_cert_check"
    report = json.loads(next(reports.glob("*.json")).read_text())
    assert list(reports.glob("*.md"))
    return result.ok, result.message, report


def test_the_job_is_active() -> None:
    assert JOBS["weekly_cert_check"].active


def test_expiring_and_unreachable_certificates_fail_the_run(
    tmp_path: Path, store: StateStore, servers: dict[str, TlsServer]
) -> None:
    root = tmp_path / "config"
    root.mkdir()
    # The admin certificate file expires in 20 days: a warning.
    make_cert(root / "tls", "admin", days=20)
    (root / "pipeline.yaml").write_text(
        "name: t\nadmin:\n  tls:\n    cert_file: tls/admin.crt\n    key_file: tls/admin.key\n"
    )
    http_destination(root, "short_api", f"https://127.0.0.1:{servers['short'].port}/in")
    http_destination(root, "long_api", f"https://127.0.0.1:{servers['long'].port}/in")
    http_destination(root, "gone_api", f"https://127.0.0.1:{closed_port()}/in")
    http_destination(root, "plain_api", "http://127.0.0.1:9/in")
    # Gamma's admin API "serves" the 200-day certificate.
    gamma_url = f"https://127.0.0.1:{servers['long'].port}"
    ok, message, report = run_job(tmp_path, store, {"gamma": gamma_url})
    assert not ok
    by_target = {c["target"]: c for c in report["certificates"]}
    short = by_target[f"127.0.0.1:{servers['short'].port}"]
    assert short["status"] == "FAIL" and 2 < short["days_left"] < 3.1
    assert short["configured_in"] == ["gamma/destinations/short_api.spec.connection.url"]
    long = by_target[f"127.0.0.1:{servers['long'].port}"]
    assert long["status"] == "OK" and long["days_left"] > 199
    gone = [c for c in report["certificates"] if "unreachable" in c.get("error", "")]
    assert len(gone) == 1 and gone[0]["status"] == "FAIL"
    admin_file = next(c for c in report["certificates"] if c["kind"] == "admin_cert_file")
    assert admin_file["status"] == "WARN" and 19 < admin_file["days_left"] < 20.1
    admin_api = next(c for c in report["certificates"] if c["kind"] == "admin_api")
    assert admin_api["target"] == f"gamma {gamma_url}" and admin_api["status"] == "OK"
    assert len(report["certificates"]) == 5  # the plain http destination is not checked
    assert set(report["failed"]) == {short["target"], gone[0]["target"]}
    assert "failing" in message and "expiring within 30 days" in message


def test_a_warning_does_not_fail_the_run_and_expired_does(
    tmp_path: Path, store: StateStore, servers: dict[str, TlsServer]
) -> None:
    root = tmp_path / "config"
    root.mkdir()
    (root / "pipeline.yaml").write_text("name: t\n")
    http_destination(root, "soon_api", f"https://127.0.0.1:{servers['soon'].port}/in")
    ok, message, report = run_job(tmp_path, store, {})
    assert ok, message
    assert [c["status"] for c in report["certificates"]] == ["WARN"]
    assert report["warn"] == [f"127.0.0.1:{servers['soon'].port}"]
    # An expired admin certificate fails.
    make_cert(root / "tls", "admin", days=-1, not_before_days=30)
    (root / "pipeline.yaml").write_text(
        "name: t\nadmin:\n  tls:\n    cert_file: tls/admin.crt\n    key_file: tls/admin.key\n"
    )
    for old in (tmp_path / "reports" / "weekly_cert_check").iterdir():
        old.unlink()
    ok, message, report = run_job(tmp_path, store, {})
    assert not ok
    admin_file = next(c for c in report["certificates"] if c["kind"] == "admin_cert_file")
    assert admin_file["status"] == "FAIL" and admin_file["days_left"] < 0
