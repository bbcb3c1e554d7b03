"""The record envelope that travels through every stage, and its binary codec.

A record is encoded once per hop (MessagePack via msgspec, typed, no text re-parsing) and
decoded once by the next stage. ``record_id`` is deterministic: the source's id field when the
source has one, else a hash of the payload's canonical encoding, so the same record ingested
twice has the same id. Dedupe and idempotent delivery both rest on that.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec


#: The envelope's structs are not tracked by the garbage collector (``gc=False``): a record, its
#: quality and its lineage steps hold only data decoded from bytes (text, numbers, and dicts and
#: lists of them), so they can never be part of a reference cycle, and a batch in flight is
#: thousands of them that each young-generation collection would otherwise traverse again. The
#: dicts and lists inside stay tracked as usual.
class Quality(msgspec.Struct, kw_only=True, gc=False):
    """Quality score (0..1) and the per-dimension scores that made it."""

    score: float
    dimensions: dict[str, float] = {}
    #: The checks that cost points (``"completeness: amount is missing (-0.2)"``); optional, so
    #: records encoded before it existed still decode, and older readers skip it.
    checks: list[str] = []


class LineageStep(msgspec.Struct, array_like=True, gc=False):
    """One thing that touched a record: stage, action (rule id, enrichment, route), when."""

    stage: str
    action: str
    at: float


class Record(msgspec.Struct, kw_only=True, gc=False):
    """The envelope. ``payload`` is the data; everything else is about the data."""

    record_id: str
    source_id: str
    correlation_id: str
    ingested_at: float
    payload: dict[str, Any]
    event_time: str | None = None
    origin: str = ""
    quality: Quality | None = None
    lineage: list[LineageStep] = []
    attempts: int = 0

    def touched(self, stage: str, action: str) -> None:
        """Append a lineage step (rule applied, route taken, ...)."""
        self.lineage.append(LineageStep(stage, action, time.time()))


#: The lineage action prefix of an enrichment lookup (``enrichment:<source>``).
ENRICHMENT_PREFIX = "enrichment:"


def lineage_summary(record: Record) -> tuple[tuple[str, ...], tuple[str, ...], float | None]:
    """What the delivery log keeps of a record's Beta history: ``(rules, enrichment, score)``.

    ``rules`` are the ids of the rules applied (and ``schema:<ref>`` for the output schema
    checked), in order; ``enrichment`` the enrichment sources that filled fields (``<source>``,
    or ``<source>:default`` for a miss answered with ``on_miss: default``); each once, so a
    record replayed through Beta is not listed twice. Step timestamps are not kept.
    """
    actions = tuple([step.action for step in record.lineage if step.stage == "beta"])
    parts = _summaries.get(actions)
    if parts is None:
        parts = _summarise(actions)
    score = record.quality.score if record.quality is not None else None
    return parts[0], parts[1], score


#: Summaries by the tuple of Beta actions: the records of a pipeline go through a handful of
#: distinct rule paths, so Gamma splits each path once rather than once per record.
_summaries: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
_SUMMARIES_KEPT = 4096


def _summarise(actions: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    rules: dict[str, None] = {}
    enrichment: dict[str, None] = {}
    for action in actions:
        if action.startswith(ENRICHMENT_PREFIX):
            enrichment[action[len(ENRICHMENT_PREFIX) :]] = None
        else:
            rules[action] = None
    if len(_summaries) >= _SUMMARIES_KEPT:
        _summaries.clear()
    parts = _summaries[actions] = (tuple(rules), tuple(enrichment))
    return parts


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)
_canonical = msgspec.json.Encoder(order="sorted")


def encode(record: Record) -> bytes:
    """Encode one record for a queue hop."""
    return _encoder.encode(record)


def decode(data: bytes) -> Record:
    """Decode one record written by :func:`encode`.

    Raises ``msgspec.DecodeError`` (a ``ValueError``) on bytes that are not a record.
    """
    return _decoder.decode(data)


def content_hash(payload: Mapping[str, Any]) -> str:
    """A stable hash of a payload: key order and whitespace do not change it."""
    return hashlib.blake2b(_canonical.encode(payload), digest_size=16).hexdigest()


def make_record_id(source_id: str, payload: Mapping[str, Any], id_field: str | None) -> str:
    """The deterministic id of a record: ``<source_id>:<id>`` or ``<source_id>:h<content hash>``.

    The id field may be a dotted path into the payload. A missing or empty id falls back to the
    content hash, so a record without an id is still deduplicated by its content.
    """
    if id_field:
        value = get_path(payload, id_field)
        if value is not None and value != "":
            return f"{source_id}:{value}"
    return f"{source_id}:h{content_hash(payload)}"


_MISSING = object()


def get_path(payload: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """Read a dotted path (``customer.address.city``) from a nested payload."""
    if "." not in path and isinstance(payload, dict):
        return payload.get(path, default)  # the common case, once per rule and record
    node: Any = payload
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return default
        if node is _MISSING:
            return default
    return node


#: Correlation ids come from a generator seeded from the OS once per process (and again in a
#: forked child, which would otherwise repeat its parent's ids). ``os.urandom`` per record was a
#: system call that gives up the interpreter lock, which another thread may then hold: Alpha in
#: one process took 16.0 µs of wall time per record with it, 15.3 without.
_correlation = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _correlation.seed(os.urandom(32)))


def new_correlation_id() -> str:
    """64 random bits as 16 hex digits (as ``uuid4().hex[:16]`` was); not for secrets."""
    return f"{_correlation.getrandbits(64):016x}"


def new_record(
    source_id: str,
    payload: dict[str, Any],
    *,
    id_field: str | None = None,
    event_time: str | None = None,
    origin: str = "",
) -> Record:
    """Build a freshly ingested record with its deterministic id and a new correlation id."""
    return Record(
        record_id=make_record_id(source_id, payload, id_field),
        source_id=source_id,
        correlation_id=new_correlation_id(),
        ingested_at=time.time(),
        payload=payload,
        event_time=event_time,
        origin=origin,
    )


class _WireRecord(Record, kw_only=True):
    """A record as :class:`LineageSharingDecoder` reads it: the lineage left as its bytes."""

    lineage: msgspec.Raw = msgspec.Raw(b"\x90")  # type: ignore[assignment]  # an empty array


_wire_decoder = msgspec.msgpack.Decoder(_WireRecord)
_lineage_decoder = msgspec.msgpack.Decoder(list[LineageStep])


class LineageSharingDecoder:
    """Decodes records like :func:`decode`, reading each distinct lineage once.

    The records of a batch went through Beta together, so most of them carry the very same
    lineage bytes (the same rules, stamped with the batch's time); building its steps is a third
    of decoding a record. This decoder keeps the steps by their bytes and gives each record its
    own list of the shared steps (appending to one record's lineage leaves the others alone;
    steps themselves are never changed once appended). The result equals :func:`decode`'s.
    One instance per thread.
    """

    def __init__(self, kept: int = 1024) -> None:
        self._kept = kept
        self._steps: dict[bytes, tuple[LineageStep, ...]] = {}

    def decode(self, data: bytes) -> Record:
        """Decode one record; raises ``msgspec.DecodeError`` like :func:`decode`."""
        wire = _wire_decoder.decode(data)
        key = bytes(wire.lineage)
        steps = self._steps.get(key)
        if steps is None:
            if len(self._steps) >= self._kept:
                self._steps.clear()
            steps = self._steps[key] = tuple(_lineage_decoder.decode(key))
        # The same fields in the same layout: the object becomes the plain Record it encodes.
        record: Record = wire
        record.__class__ = Record
        record.lineage = list(steps)
        return record


def encode_many(records: Iterable[Record]) -> list[tuple[str, bytes]]:
    """Encode a batch as ``(record_id, bytes)`` pairs, the unit queues accept."""
    return encode_keyed((r.record_id, r) for r in records)


def encode_keyed(items: Iterable[tuple[str, Record]]) -> list[tuple[str, bytes]]:
    """Encode ``(message id, record)`` pairs as ``(message id, bytes)``; equals :func:`encode`.

    Each record is encoded into one reused buffer and copied out at its exact size: ``encode``
    grows a fresh buffer by reallocation as it writes, which costs more than the one copy
    (about 0.25 µs of a 2 µs encode of a transformed record).
    """
    buffer = bytearray(_ENCODE_BUFFER_BYTES)
    into = _encoder.encode_into
    out: list[tuple[str, bytes]] = []
    append = out.append
    for key, record in items:
        into(record, buffer)  # leaves the buffer exactly as long as the encoding
        append((key, bytes(buffer)))
    return out


#: The starting size of :func:`encode_keyed`'s buffer: a transformed record is about 800 bytes.
_ENCODE_BUFFER_BYTES = 4096
