"""A step's fetches run at once (PARSER_THREAD_COUNT > 1); the ingest and commits stay serial.

When the ingest of one source fails, what the other sources fetched in the same step is handed
out again (not skipped), and the room of the ingest buffer is shared out among the fetches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dps.alpha.module import AlphaModule
from dps.core.record import decode


def config(tmp_path: Path, threads: int, *, batch: int = 100, capacity: int = 10000) -> Path:
    root = tmp_path / "config"
    (root / "alpha" / "sources").mkdir(parents=True)
    (root / "pipeline.yaml").write_text("name: t\n")
    (root / "alpha" / "alpha.yaml").write_text(
        f"DEFAULT_BATCH_SIZE: {batch}\nPARSER_THREAD_COUNT: {threads}\n"
        f"BUFFER_CAPACITY: {capacity}\n"
    )
    for name in ("a", "b", "c"):
        data = tmp_path / "in" / name
        data.mkdir(parents=True)
        (data / "x.ndjson").write_text(
            "".join(json.dumps({"id": f"{name}{i}"}) + "\n" for i in range(10))
        )
        (root / "alpha" / "sources" / f"{name}.yaml").write_text(
            f"source_id: {name}\nsource_type: file\nconnection:\n  path: {data}\n"
            "parsing:\n  format: ndjson\n  id_field: id\n"
        )
    return root


def taken(alpha: AlphaModule) -> list[Any]:
    lease = alpha.queue.lease(1000)
    ids = [decode(m.body).payload["id"] for m in lease.messages]
    if lease.messages:
        alpha.queue.ack(lease)
    return ids


@pytest.mark.parametrize("threads", [1, 3])
def test_a_failed_ingest_hands_every_fetch_of_the_step_out_again(
    tmp_path: Path, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha = AlphaModule(config(tmp_path, threads), data_dir=tmp_path / "data")
    try:
        real_put = alpha.queue.put
        calls = []

        def put_failing_once(messages: Any, timeout: float | None = None) -> None:
            calls.append(len(messages))
            if len(calls) == 1:
                raise OSError("disk full")
            real_put(messages, timeout)

        monkeypatch.setattr(alpha.queue, "put", put_failing_once)
        with pytest.raises(OSError, match="disk full"):
            alpha.step()
        assert alpha.queue.depth() == 0
        assert alpha.state_store.offsets("b") == {} and alpha.state_store.offsets("c") == {}
        while alpha.step():
            pass
        ids = taken(alpha)
        assert sorted(ids) == sorted(f"{n}{i}" for n in "abc" for i in range(10))
    finally:
        alpha.close()


def test_the_fetches_of_a_step_share_the_room_of_the_buffer(tmp_path: Path) -> None:
    alpha = AlphaModule(config(tmp_path, 3, batch=5, capacity=12), data_dir=tmp_path / "data")
    try:
        assert alpha.step()
        # 12 records of room, three sources fetched at once (5, 5 and 2): never more than that.
        assert alpha.queue.depth() == 12
        assert not alpha.step()  # full: nothing is fetched
        seen = set(taken(alpha))
        for _ in range(10):
            alpha.step()
            assert alpha.queue.depth() <= 12
            seen |= set(taken(alpha))
        assert seen == {f"{n}{i}" for n in "abc" for i in range(10)}
    finally:
        alpha.close()
