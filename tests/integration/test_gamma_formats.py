"""Output formats (``gamma/formats/*.yaml``), the ``file`` destination's CSV output and rotation,
and ``database``'s ``on_missing_field``.

Formats are loaded from a CONFIG_DIR through the real loader and used by real destinations: a
file on disk and an HTTP server on a free local port.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from dps.config import load_config
from dps.config.models import OutputFormat, PipelineConfig
from dps.core.errors import ConfigError
from dps.core.record import Quality, Record
from dps.gamma.destinations.base import RecordError
from dps.gamma.destinations.file import FileDestination
from dps.gamma.formats import Shaper
from dps.gamma.module import destination_factory


def _record(n: int, payload: dict[str, Any] | None = None, score: float | None = 0.9) -> Record:
    return Record(
        record_id=f"orders_file:{n}",
        source_id="orders_file",
        correlation_id=f"corr-{n}",
        ingested_at=1_795_000_000.0 + n,
        event_time="2026-11-27T10:00:00Z",
        payload=payload
        if payload is not None
        else {"order_id": n, "amount": n * 1.5, "customer": {"id": f"C-{n}", "city": "Oslo"}},
        quality=Quality(score=score) if score is not None else None,
    )


def _config(
    tmp_path: Path, destinations: list[dict[str, Any]], formats: list[dict[str, Any]]
) -> Path:
    root = tmp_path / "config"
    for folder, docs, key in (
        (root / "gamma" / "destinations", destinations, "destination_id"),
        (root / "gamma" / "formats", formats, "format_id"),
    ):
        folder.mkdir(parents=True, exist_ok=True)
        for doc in docs:
            (folder / f"{doc[key]}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


PUBLIC_ORDER = {
    "format_id": "public_order",
    "description": "What partners see of an order.",
    "fields": {"id": "order_id", "total": "amount", "customer": "customer.id"},
    "template": {
        "label": "order {order_id} for {customer.id}",
        "score": "{quality_score}",
        "meta": {"source": "{source_id}", "tags": ["pipeline", "{customer.city}"]},
    },
}


# -- the format itself -------------------------------------------------------------------------


def test_fields_rename_and_the_template_keeps_types() -> None:
    shape = Shaper(OutputFormat.model_validate(PUBLIC_ORDER))

    assert shape(_record(7)) == {
        "record_id": "orders_file:7",
        "id": 7,
        "total": 10.5,
        "customer": "C-7",
        "label": "order 7 for C-7",
        "score": 0.9,
        "meta": {"source": "orders_file", "tags": ["pipeline", "Oslo"]},
    }
    assert shape.columns == ["record_id", "id", "total", "customer", "label", "score", "meta"]


def test_a_field_list_selects_and_missing_fields_are_null() -> None:
    shape = Shaper(
        OutputFormat.model_validate(
            {"format_id": "slim", "fields": ["order_id", "coupon", "event_time"]}
        )
    )
    assert shape(_record(1)) == {
        "record_id": "orders_file:1",
        "order_id": 1,
        "coupon": None,
        "event_time": "2026-11-27T10:00:00Z",
    }
    # Interpolating a missing field gives an empty string, not "None".
    text = Shaper(OutputFormat.model_validate({"format_id": "t", "template": {"c": "x{coupon}y"}}))
    assert text(_record(1))["c"] == "xy"


def test_without_fields_and_template_the_payload_is_sent_with_the_record_id() -> None:
    shape = Shaper(OutputFormat.model_validate({"format_id": "raw", "include_record_id": False}))
    assert shape(_record(2, {"a": 1})) == {"a": 1}


# -- loading -------------------------------------------------------------------------------------


def _file_dest(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "destination_id": name,
        "destination_type": "file",
        "connection": {"path": str(tmp_path / "out" / f"{name}.jsonl")},
        **extra,
    }


def test_formats_load_and_destinations_reference_them(tmp_path: Path) -> None:
    root = _config(
        tmp_path, [_file_dest(tmp_path, "partner", output_format="public_order")], [PUBLIC_ORDER]
    )
    config = load_config(root)
    assert list(config.gamma.formats) == ["public_order"]
    assert config.gamma.destinations["partner"].output_format == "public_order"


def test_an_unknown_output_format_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    root = _config(
        tmp_path, [_file_dest(tmp_path, "partner", output_format="public_ordr")], [PUBLIC_ORDER]
    )
    with pytest.raises(ConfigError) as caught:
        load_config(root)
    [issue] = caught.value.issues
    assert "partner.yaml" in issue.file and issue.key == "output_format"
    assert '"public_ordr" is not a known output format' in issue.message
    assert 'Did you mean "public_order"?' in issue.message


def test_a_database_destination_may_not_name_an_output_format(tmp_path: Path) -> None:
    dest = {
        "destination_id": "warehouse",
        "destination_type": "database",
        "connection": {"type": "sqlite", "path": str(tmp_path / "w.db")},
        "format": {"table": "events"},
        "output_format": "public_order",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, [dest], [PUBLIC_ORDER]))
    [issue] = caught.value.issues
    assert issue.key == "output_format" and "column_mapping" in issue.message


def test_a_bad_format_file_names_the_key(tmp_path: Path) -> None:
    bad = {"format_id": "broken", "fields": [], "colour": "red"}
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, [], [bad]))
    keys = {issue.key for issue in caught.value.issues}
    assert keys == {"fields", "colour"}, caught.value.issues


# -- destinations using a format ---------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Any]]]:
    bodies: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/in", bodies
    server.shutdown()
    server.server_close()


def _build(config: PipelineConfig, dest_id: str) -> Any:
    return destination_factory(config)(config.gamma.destinations[dest_id])


def test_an_http_destination_sends_the_shaped_documents(
    tmp_path: Path, receiver: tuple[str, list[Any]]
) -> None:
    url, bodies = receiver
    dest = {
        "destination_id": "partner",
        "destination_type": "http",
        "connection": {"url": url},
        "output_format": "public_order",
    }
    config = load_config(_config(tmp_path, [dest], [PUBLIC_ORDER]))
    destination = _build(config, "partner")
    try:
        assert destination.deliver([_record(1), _record(2)]) == []
    finally:
        destination.close()
    assert [doc["id"] for doc in bodies[0]] == [1, 2]
    assert bodies[0][0]["label"] == "order 1 for C-1" and bodies[0][0]["total"] == 1.5


def test_a_file_destination_writes_the_shaped_documents_as_jsonl(tmp_path: Path) -> None:
    config = load_config(
        _config(
            tmp_path,
            [_file_dest(tmp_path, "partner", output_format="public_order")],
            [PUBLIC_ORDER],
        )
    )
    destination = _build(config, "partner")
    try:
        destination.deliver([_record(1)])
    finally:
        destination.close()
    [line] = (tmp_path / "out" / "partner.jsonl").read_text().splitlines()
    assert json.loads(line)["customer"] == "C-1"


# -- file: CSV and rotation ----------------------------------------------------------------------


def _csv_destination(path: Path, **fmt: Any) -> FileDestination:
    rotation = fmt.pop("rotation", None)
    spec = FileDestination.Config.model_validate(
        {
            "connection": {"path": str(path), **({"rotation": rotation} if rotation else {})},
            "format": {"type": "csv", **fmt},
        }
    )
    destination = FileDestination("export", spec)
    destination.open()
    return destination


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def test_csv_has_a_header_and_one_row_per_record_with_json_for_nested_values(
    tmp_path: Path,
) -> None:
    out = tmp_path / "export.csv"
    destination = _csv_destination(out)
    try:
        destination.deliver([_record(1), _record(2, {"note": 'says "hi",\nbye'}, score=None)])
    finally:
        destination.close()
    rows = _csv_rows(out)
    assert rows[0] == ["record_id", "source_id", "quality_score", "payload"]
    assert rows[1][:3] == ["orders_file:1", "orders_file", "0.9"]
    assert json.loads(rows[1][3])["customer"] == {"id": "C-1", "city": "Oslo"}
    assert rows[2] == ["orders_file:2", "orders_file", "", '{"note":"says \\"hi\\",\\nbye"}']


def test_csv_columns_select_payload_fields(tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    destination = _csv_destination(out, envelope=False, columns=["order_id", "amount", "missing"])
    try:
        destination.deliver([_record(3)])
    finally:
        destination.close()
    assert _csv_rows(out) == [
        ["record_id", "order_id", "amount", "missing"],
        ["orders_file:3", "3", "4.5", ""],
    ]


def test_csv_without_envelope_or_columns_is_refused_on_open(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"format\.columns"):
        _csv_destination(tmp_path / "x.csv", envelope=False)


def test_csv_is_idempotent_across_reopen(tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    first = _csv_destination(out)
    try:
        first.deliver([_record(1), _record(2)])
    finally:
        first.close()
    again = _csv_destination(out)
    try:
        again.deliver([_record(2), _record(3), _record(3)])
    finally:
        again.close()
    assert [row[0] for row in _csv_rows(out)] == [
        "record_id",
        "orders_file:1",
        "orders_file:2",
        "orders_file:3",
    ]


def test_csv_fsyncs_each_batch_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export.csv"
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(out.stat().st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    destination = _csv_destination(out)
    try:
        header = out.stat().st_size
        destination.deliver([_record(1)])
        after_first = out.stat().st_size
        destination.deliver([_record(2)])
    finally:
        destination.close()
    assert synced == [header, after_first, out.stat().st_size]


def _all_ids(folder: Path, pattern: str) -> list[str]:
    ids: list[str] = []
    for path in sorted(folder.glob(pattern)):
        rows = _csv_rows(path)
        assert rows[0][0] == "record_id", path  # every file starts with its header
        ids += [row[0] for row in rows[1:]]
    return ids


def test_rotation_by_size_starts_new_files_and_loses_or_repeats_nothing(tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    destination = _csv_destination(out, rotation={"max_bytes": 1200})
    try:
        for batch in range(10):
            destination.deliver([_record(batch * 3 + i) for i in range(3)])
    finally:
        destination.close()
    rotated = sorted(tmp_path.glob("export-*.csv"))
    assert len(rotated) >= 3
    assert all(path.stat().st_size <= 1200 for path in rotated)
    ids = _all_ids(tmp_path, "export*.csv")
    assert sorted(ids) == sorted(f"orders_file:{n}" for n in range(30))

    # A restart reads the ids back from every file: redelivering everything writes nothing.
    again = _csv_destination(out, rotation={"max_bytes": 1200})
    try:
        again.deliver([_record(n) for n in range(31)])
    finally:
        again.close()
    assert sorted(_all_ids(tmp_path, "export*.csv")) == sorted(
        f"orders_file:{n}" for n in range(31)
    )


def test_rotation_by_time(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    spec = FileDestination.Config.model_validate(
        {"connection": {"path": str(out), "rotation": {"interval_seconds": 0.3}}}
    )
    destination = FileDestination("events", spec)
    destination.open()
    try:
        destination.deliver([_record(1)])
        destination.deliver([_record(2)])  # same period: same file
        time.sleep(0.4)
        destination.deliver([_record(3)])
    finally:
        destination.close()
    [rotated] = sorted(tmp_path.glob("events-*.jsonl"))
    assert [json.loads(line)["record_id"] for line in rotated.read_text().splitlines()] == [
        "orders_file:1",
        "orders_file:2",
    ]
    assert [json.loads(line)["record_id"] for line in out.read_text().splitlines()] == [
        "orders_file:3"
    ]


# -- database: a mapped field the record lacks ---------------------------------------------------


@pytest.mark.parametrize("policy", ["null", "dlq"])
def test_a_mapped_field_the_record_lacks(tmp_path: Path, policy: str) -> None:
    dest = {
        "destination_id": "warehouse",
        "destination_type": "database",
        "connection": {"type": "sqlite", "path": str(tmp_path / "w.db")},
        "format": {
            "table": "events",
            "column_mapping": {"record_id": "event_id", "coupon_code": "coupon"},
            "on_missing_field": policy,
        },
    }
    config = load_config(_config(tmp_path, [dest], []))
    destination = _build(config, "warehouse")
    try:
        rejected = destination.deliver([_record(1, {"coupon_code": "SAVE"}), _record(2, {})])
    finally:
        destination.close()
    with sqlite3.connect(tmp_path / "w.db") as db:
        rows = sorted(db.execute("SELECT event_id, coupon FROM events"))
    if policy == "null":
        assert rejected == []
        assert rows == [("orders_file:1", "SAVE"), ("orders_file:2", None)]
    else:
        assert rows == [("orders_file:1", "SAVE")]
        [(record, error)] = rejected
        assert record.record_id == "orders_file:2"
        assert isinstance(error, RecordError) and error.error_class == "poison"
        assert error.reason == "missing_field" and "coupon_code (column coupon)" in str(error)
