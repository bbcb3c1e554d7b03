"""The record envelope: codec round trip, deterministic ids, payload paths, content hash."""

from __future__ import annotations

import os

import msgspec
import pytest

from dps.core.record import (
    LineageSharingDecoder,
    LineageStep,
    Quality,
    Record,
    content_hash,
    decode,
    encode,
    encode_keyed,
    encode_many,
    get_path,
    make_record_id,
    new_correlation_id,
    new_record,
)


def _record(**overrides: object) -> Record:
    fields: dict[str, object] = {
        "record_id": "orders:1",
        "source_id": "orders",
        "correlation_id": "c0ffee",
        "ingested_at": 1_700_000_000.25,
        "payload": {"id": 1, "customer": {"id": "C-9", "tags": ["a", "b"]}, "amount": 12.5},
    }
    fields.update(overrides)
    return Record(**fields)  # type: ignore[arg-type]


# -- codec ------------------------------------------------------------------------------------


def test_encode_decode_round_trips_every_field() -> None:
    record = _record(
        event_time="2026-11-27T09:00:00Z",
        origin="/in/a.ndjson:7",
        quality=Quality(score=0.8, dimensions={"completeness": 0.8}),
        lineage=[LineageStep("beta", "TRX_042", 1_700_000_001.0)],
        attempts=3,
    )

    decoded = decode(encode(record))

    assert decoded == record
    assert decoded.quality is not None and decoded.quality.dimensions == {"completeness": 0.8}
    assert decoded.lineage[0].action == "TRX_042"


def test_encoding_is_binary_and_not_json_text() -> None:
    data = encode(_record())
    assert isinstance(data, bytes)
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(data)


def test_decode_refuses_bytes_that_are_not_msgpack() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode(b"\xc1 not msgpack")


def test_decode_refuses_msgpack_that_is_not_a_record() -> None:
    with pytest.raises(ValueError):  # msgspec.ValidationError is a DecodeError is a ValueError
        decode(msgspec.msgpack.encode({"record_id": "x"}))


def test_lineage_sharing_decoder_gives_what_decode_gives() -> None:
    steps = [LineageStep("beta", "TRX_042", 1.5), LineageStep("beta", "enrichment:crm", 2.5)]
    first, second = _record(lineage=steps), _record(record_id="orders:2", lineage=list(steps))
    bare = msgspec.msgpack.encode(
        {k: v for k, v in msgspec.to_builtins(_record()).items() if k != "lineage"}
    )  # written before lineage existed
    decoder = LineageSharingDecoder()

    records = [decoder.decode(encode(r)) for r in (first, second, first, _record())]
    records.append(decoder.decode(bare))

    assert records == [first, second, first, _record(), _record()]
    assert all(type(r) is Record for r in records)
    assert [encode(r) for r in records[:2]] == [encode(first), encode(second)]


def test_lineage_sharing_decoder_gives_each_record_its_own_lineage() -> None:
    decoder = LineageSharingDecoder()
    data = encode(_record(lineage=[LineageStep("beta", "TRX_042", 1.5)]))
    one, two = decoder.decode(data), decoder.decode(data)

    one.touched("gamma", "route:warehouse")

    assert [s.action for s in one.lineage] == ["TRX_042", "route:warehouse"]
    assert [s.action for s in two.lineage] == ["TRX_042"]
    assert [s.action for s in decoder.decode(data).lineage] == ["TRX_042"]


def test_lineage_sharing_decoder_keeps_a_bounded_number_of_lineages() -> None:
    decoder = LineageSharingDecoder(kept=3)
    for n in range(10):
        record = _record(lineage=[LineageStep("beta", f"TRX_{n:03d}", 1.0)])
        assert decoder.decode(encode(record)) == record
    assert len(decoder._steps) <= 3


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1 not msgpack",
        msgspec.msgpack.encode({"record_id": "x"}),
        encode(_record())[:-1] + b"\xc0",  # the last field (attempts) null
        msgspec.msgpack.encode({**msgspec.to_builtins(_record()), "lineage": [["beta"]]}),
    ],
    ids=["not-msgpack", "not-a-record", "bad-field", "bad-lineage"],
)
def test_lineage_sharing_decoder_refuses_what_decode_refuses(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode(data)
    with pytest.raises(msgspec.DecodeError):
        LineageSharingDecoder().decode(data)


def test_encode_many_pairs_each_id_with_its_bytes() -> None:
    first, second = _record(record_id="s:1"), _record(record_id="s:2")

    pairs = encode_many([first, second])

    assert [rid for rid, _ in pairs] == ["s:1", "s:2"]
    assert decode(pairs[1][1]) == second


def test_encode_keyed_equals_encode_for_records_short_and_longer_than_its_buffer() -> None:
    """One buffer is reused for the batch: a long record after a short one, and a short one
    after a long one, each come out exactly as ``encode`` writes them."""
    short = _record(record_id="s:1")
    long = _record(record_id="s:2", payload={"text": "x" * 10_000, "n": list(range(500))})
    items = [("m1", short), ("m2", long), ("m3", short)]

    pairs = encode_keyed(items)

    assert pairs == [(key, encode(record)) for key, record in items]
    assert decode(pairs[1][1]) == long


# -- record ids and content hash ---------------------------------------------------------------


def test_record_id_uses_the_id_field() -> None:
    assert make_record_id("orders", {"order_id": "A-17"}, "order_id") == "orders:A-17"


def test_record_id_reads_a_dotted_id_field() -> None:
    assert make_record_id("crm", {"customer": {"id": 42}}, "customer.id") == "crm:42"


def test_record_id_keeps_a_falsy_but_present_id() -> None:
    assert make_record_id("s", {"id": 0}, "id") == "s:0"


@pytest.mark.parametrize("payload", [{"name": "x"}, {"id": None, "name": "x"}, {"id": ""}])
def test_record_id_falls_back_to_the_content_hash(payload: dict[str, object]) -> None:
    assert make_record_id("s", payload, "id") == f"s:h{content_hash(payload)}"


def test_record_id_without_id_field_is_the_content_hash() -> None:
    payload = {"id": 7, "name": "x"}
    assert make_record_id("s", payload, None) == f"s:h{content_hash(payload)}"


def test_record_id_is_the_same_whatever_the_key_order() -> None:
    a = {"name": "Ann", "address": {"city": "Oslo", "zip": "0150"}}
    b = {"address": {"zip": "0150", "city": "Oslo"}, "name": "Ann"}
    assert make_record_id("s", a, None) == make_record_id("s", b, None)


def test_record_id_differs_per_source_and_per_content() -> None:
    payload = {"name": "Ann"}
    assert make_record_id("a", payload, None) != make_record_id("b", payload, None)
    assert make_record_id("a", payload, None) != make_record_id("a", {"name": "Bob"}, None)


def test_content_hash_is_a_short_hex_digest_stable_under_key_order() -> None:
    digest = content_hash({"b": 1, "a": [1, {"y": 2, "x": 1}]})
    assert digest == content_hash({"a": [1, {"x": 1, "y": 2}], "b": 1})
    assert len(digest) == 32 and int(digest, 16) >= 0


def test_content_hash_sees_list_order_and_value_types() -> None:
    assert content_hash({"a": [1, 2]}) != content_hash({"a": [2, 1]})
    assert content_hash({"a": 1}) != content_hash({"a": "1"})


# -- payload paths ------------------------------------------------------------------------------


PAYLOAD = {
    "customer": {"id": "C-9", "address": {"city": "Oslo"}, "phones": ["111", "222"]},
    "empty": None,
    "count": 3,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("count", 3),
        ("customer.id", "C-9"),
        ("customer.address.city", "Oslo"),
        ("customer.phones.1", "222"),
        ("customer.phones", ["111", "222"]),
    ],
)
def test_get_path_reads_nested_values(path: str, expected: object) -> None:
    assert get_path(PAYLOAD, path) == expected


@pytest.mark.parametrize(
    "path",
    ["missing", "customer.missing", "customer.phones.2", "customer.phones.x", "count.inner"],
)
def test_get_path_returns_the_default_when_the_path_is_absent(path: str) -> None:
    assert get_path(PAYLOAD, path) is None
    assert get_path(PAYLOAD, path, "fallback") == "fallback"


def test_get_path_returns_a_present_null_not_the_default() -> None:
    assert get_path(PAYLOAD, "empty", "fallback") is None


# -- new records and lineage ----------------------------------------------------------------------


def test_new_record_has_a_deterministic_id_and_a_fresh_correlation_id() -> None:
    first = new_record("orders", {"order_id": 5}, id_field="order_id", origin="/in/a:1")
    again = new_record("orders", {"order_id": 5}, id_field="order_id", origin="/in/a:1")

    assert first.record_id == again.record_id == "orders:5"
    assert first.correlation_id != again.correlation_id
    assert first.origin == "/in/a:1"
    assert first.lineage == [] and first.attempts == 0 and first.quality is None


def test_correlation_ids_are_16_hex_digits_and_do_not_repeat() -> None:
    ids = [new_correlation_id() for _ in range(100_000)]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_its_parents_correlation_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_correlation_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    parent = {new_correlation_id() for _ in range(3)}
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    assert len(child) == 3 and not child & parent


def test_touched_appends_a_lineage_step_to_that_record_only() -> None:
    first, second = _record(), _record()

    first.touched("beta", "TRX_010")
    first.touched("gamma", "route:warehouse")

    assert [(s.stage, s.action) for s in first.lineage] == [
        ("beta", "TRX_010"),
        ("gamma", "route:warehouse"),
    ]
    assert second.lineage == []
