"""How the NATS backend cuts a put into frames and names them (``dps.queues.nats``)."""

from __future__ import annotations

from dps.queues.nats import H_RECORDS, _frame_encoder, cut_frames, frame_id, unpack


def pairs(n: int, size: int = 10) -> list[tuple[str, bytes]]:
    return [(f"id{i}", b"x" * size) for i in range(n)]


def test_frames_hold_at_most_the_records_asked_in_order() -> None:
    frames = cut_frames(pairs(10), 4)
    assert [len(f) for f in frames] == [4, 4, 2]
    assert [pair for frame in frames for pair in frame] == pairs(10)


def test_frames_stay_under_the_byte_limit_and_a_larger_record_goes_alone() -> None:
    batch = [("a", b"x" * 40), ("b", b"x" * 40), ("big", b"x" * 500), ("c", b"x" * 10)]
    frames = cut_frames(batch, 100, max_bytes=100)
    assert [[msg_id for msg_id, _ in f] for f in frames] == [["a", "b"], ["big"], ["c"]]


def test_the_same_batch_is_cut_and_named_the_same_way() -> None:
    first = [frame_id([i for i, _ in f]) for f in cut_frames(pairs(9), 4)]
    again = [frame_id([i for i, _ in f]) for f in cut_frames(pairs(9), 4)]
    assert first == again
    assert len(set(first)) == 3


def test_a_frame_id_depends_on_the_ids_their_order_and_the_salt() -> None:
    assert frame_id(["a", "b"]) != frame_id(["b", "a"])
    assert frame_id(["a", "b"]) != frame_id(["ab"])
    assert frame_id(["a"]) != frame_id(["a"], salt="frame-x/1/0")
    assert frame_id(["a"], salt="s") == frame_id(["a"], salt="s")
    assert frame_id(["a"]).startswith("frame-")


def test_unpack_reads_frames_and_plain_messages_and_hands_on_a_broken_frame_whole() -> None:
    frame = _frame_encoder.encode([("a", b"1"), ("b", b"2")])
    assert unpack({H_RECORDS: "2"}, frame, "frame-x") == [("a", b"1"), ("b", b"2")]
    assert unpack({"Nats-Msg-Id": "p"}, b"plain", "p") == [("p", b"plain")]
    assert unpack(None, b"plain", "p") == [("p", b"plain")]
    assert unpack({H_RECORDS: "2"}, b"\xc1 not msgpack", "frame-y") == [
        ("frame-y", b"\xc1 not msgpack")
    ]
