"""Bad input through the whole of Alpha (source -> parser -> validation -> DLQ / transform queue):
each case ends with the good records in the transform queue, the bad ones in the Alpha DLQ with a
reason, and the module still running (it takes the next good record).

File cases use the real SQLite queue and state store; API cases a local HTTP server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from tests.unit.alpha.fake_api import Call, FakeApi, api, ok

from dps.alpha.module import AlphaModule
from dps.core.record import decode

__all__ = ["api"]  # the fixture


def _config(tmp_path: Path, source: str) -> Path:
    root = tmp_path / "config"
    (root / "alpha" / "sources").mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text("name: bad-input-test\n")
    (root / "alpha" / "alpha.yaml").write_text("DEFAULT_BATCH_SIZE: 100\n")
    (root / "alpha" / "sources" / "src.yaml").write_text(source)
    return root


def _file_source(tmp_path: Path, fmt: str = "ndjson", parsing: str = "") -> str:
    (tmp_path / "in").mkdir(exist_ok=True)
    return (
        "source_id: bad_file\nsource_type: file\n"
        f"connection:\n  path: {tmp_path / 'in'}\n  partial_line_grace_seconds: 0\n"
        f"parsing:\n  format: {fmt}\n  id_field: id\n{parsing}"
        "validation:\n  required_fields: [id]\n"
    )


def _taken(alpha: AlphaModule) -> list[Any]:
    lease = alpha.queue.lease(1000)
    ids = [decode(m.body).payload.get("id") for m in lease.messages]
    if lease.messages:
        alpha.queue.ack(lease)
    return ids


def _run_until(
    alpha: AlphaModule, done: Callable[[list[Any]], bool], timeout: float = 20
) -> list[Any]:
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alpha.step()
        seen += _taken(alpha)
        if done(seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"only {seen} arrived")


def _dlq(alpha: AlphaModule) -> dict[str, Any]:
    return {e.origin: e for e in alpha.state_store.list_dlq("alpha", limit=1000)}


def test_a_50_mb_single_line_goes_to_the_dlq_without_being_read_whole(tmp_path: Path) -> None:
    alpha = AlphaModule(_config(tmp_path, _file_source(tmp_path)), data_dir=tmp_path / "data")
    path = tmp_path / "in" / "big.ndjson"
    try:
        with path.open("wb") as fh:
            fh.write(b'{"id": 1}\n')
            fh.write(b'{"id": 2, "blob": "' + b"x" * (50 * 1024 * 1024) + b'"}\n')
            fh.write(b'{"id": 3}\n')
        assert sorted(_run_until(alpha, lambda s: len(s) >= 2)) == [1, 3]
        entry = _dlq(alpha)[f"{path}:2"]
        assert entry.reason == "record_too_large"
        assert "more than max_record_bytes" in entry.error
        assert len(entry.body) == 64 * 1024 and entry.body.startswith(b'{"id": 2')
        with path.open("ab") as fh:  # still running: the next line is read
            fh.write(b'{"id": 4}\n')
        assert _run_until(alpha, lambda s: 4 in s) == [4]
        assert alpha.state_store.offsets("bad_file")[("bad_file", str(path))] == path.stat().st_size
    finally:
        alpha.close()


def test_truncated_json_binary_garbage_and_wrong_encodings(tmp_path: Path) -> None:
    alpha = AlphaModule(_config(tmp_path, _file_source(tmp_path)), data_dir=tmp_path / "data")
    path = tmp_path / "in" / "mixed.ndjson"
    try:
        path.write_bytes(
            b'{"id": 1}\n'
            b'{"id": 2, "name": \n'  # truncated
            b"\x00\x9f\xff\xfe\x01garbage\n"  # binary
            + '{"id": 4, "name": "Jos\u00e9"}\n'.encode("latin-1")  # not UTF-8
            + b'["not", "an", "object"]\n'
            + b'{"name": "no id"}\n'  # fails required_fields
            + b'{"id": 7}\n'
        )
        assert sorted(_run_until(alpha, lambda s: len(s) >= 2)) == [1, 7]
        dlq = _dlq(alpha)
        assert {o.rsplit(":", 1)[1]: e.reason for o, e in dlq.items()} == {
            "2": "parse_error",
            "3": "parse_error",
            "4": "parse_error",
            "5": "parse_error",
            "6": "missing_field",
        }
        assert dlq[f"{path}:3"].body == b"\x00\x9f\xff\xfe\x01garbage\n"
    finally:
        alpha.close()


def test_ragged_csv_rows_go_to_the_dlq_and_the_module_goes_on(tmp_path: Path) -> None:
    source = _file_source(tmp_path, "csv", "  csv:\n    types: {id: integer}\n")
    alpha = AlphaModule(_config(tmp_path, source), data_dir=tmp_path / "data")
    path = tmp_path / "in" / "rows.csv"
    try:
        path.write_text("id,name\n1,a\n2,b,c\n3\n4,d\n")
        assert sorted(_run_until(alpha, lambda s: len(s) >= 2)) == [1, 4]
        assert sorted(o.rsplit(":", 1)[1] for o in _dlq(alpha)) == ["3", "4"]
        with path.open("a") as fh:
            fh.write("5,e\n")
        assert _run_until(alpha, lambda s: 5 in s) == [5]
    finally:
        alpha.close()


# -- sources that misbehave ---------------------------------------------------------------------


def _api_source(url: str, extra: str = "") -> str:
    return (
        "source_id: bad_api\nsource_type: rest_api\n"
        f"connection:\n  endpoint: {url}/data\n  timeout_ms: 300\n  retry_count: 0\n{extra}"
        "polling:\n  interval_seconds: 0.1\n"
        "parsing:\n  format: json\n  record_path: $.data\n  id_field: id\n"
        "validation:\n  required_fields: [id]\n"
    )


class Script:
    """A data endpoint whose behaviour the test switches; each good answer has new records."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        if self.mode == "500":
            return 500, {}, b"internal error"
        if self.mode == "hang":
            time.sleep(1.0)
        with self.lock:
            self.n += 1
            n = self.n
        return ok(
            {"data": [{"id": f"r{n}"}, {"name": "no id, bad"} if n == 1 else {"id": f"s{n}"}]}
        )


@pytest.mark.parametrize("fault", ["500", "hang"])
def test_a_source_that_fails_then_recovers(api: FakeApi, tmp_path: Path, fault: str) -> None:
    script = Script()
    api.on("/data", script)
    alpha = AlphaModule(_config(tmp_path, _api_source(api.url)), data_dir=tmp_path / "data")
    try:
        _run_until(alpha, lambda s: "r1" in s)
        script.mode = fault
        deadline = time.monotonic() + 10
        while alpha.runners["bad_api"].status != "error" and time.monotonic() < deadline:
            alpha.step()
        runner = alpha.runners["bad_api"]
        assert runner.status == "error"
        assert ("answered 500" if fault == "500" else "did not answer") in str(runner.last_error)
        assert alpha.health().checks["sources"]["status"] == "DEGRADED"
        script.mode = "ok"
        seen = _run_until(alpha, lambda s: any(str(i).startswith("s") for i in s), 30)
        assert seen and alpha.runners["bad_api"].status == "enabled"
        # The one bad record of the first page went to the DLQ with its reason.
        assert [e.reason for e in _dlq(alpha).values()] == ["missing_field"]
    finally:
        alpha.close()


def test_a_token_expiring_mid_run_is_refreshed_and_nothing_is_lost(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAD_API_CLIENT_ID", "client")
    monkeypatch.setenv("BAD_API_SECRET", "secret")
    issued: dict[str, float] = {}

    def token(call: Call) -> tuple[int, dict[str, str], bytes]:
        form = parse_qs(call.body)
        if form.get("client_secret") != ["secret"]:
            return 401, {}, b"{}"
        name = f"t{len(issued) + 1}"
        issued[name] = time.monotonic() + 1.0  # the server lets it expire after 1 s
        return ok({"access_token": name, "expires_in": 3600})  # ... but announces an hour

    script = Script()

    def data(call: Call) -> tuple[int, dict[str, str], bytes]:
        name = call.headers.get("authorization", "").removeprefix("Bearer ")
        if issued.get(name, 0) < time.monotonic():
            return 401, {}, b'{"error": "token expired"}'
        return script(call)

    api.on("/token", token)
    api.on("/data", data)
    extra = (
        "  auth_type: oauth2\n  auth_config:\n"
        f"    token_url: {api.url}/token\n"
        "    client_id_ref: env:BAD_API_CLIENT_ID\n    client_secret_ref: env:BAD_API_SECRET\n"
    )
    alpha = AlphaModule(_config(tmp_path, _api_source(api.url, extra)), data_dir=tmp_path / "data")
    try:
        seen = _run_until(alpha, lambda s: len(issued) >= 3 and len(s) >= 6, 30)
        # Every page was answered once its token was renewed: r1..rN and s2..sN, no gaps.
        pages = script.n
        expected = {f"r{n}" for n in range(1, pages + 1)} | {f"s{n}" for n in range(2, pages + 1)}
        assert set(seen) <= expected and len(set(seen)) == len(seen)
        assert {f"r{n}" for n in range(1, pages)} <= set(seen)
        assert alpha.runners["bad_api"].status == "enabled"
        assert json.dumps(alpha.runners["bad_api"].as_dict()["token_refreshes"]) != "0"
    finally:
        alpha.close()
