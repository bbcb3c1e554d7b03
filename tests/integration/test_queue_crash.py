"""kill -9 of a producer and of a consumer loses no message and redelivers none after its ack.

On each backend, and on NATS with frames of 25 records (``pack``, as the stage queues): a
producer process (``queue_worker.py produce``) puts 3000 messages in batches
of 100 and is SIGKILLed part-way, then restarted from the first batch (idempotent put makes the
replay safe). A consumer process logs ``leased <id>`` lines, acks, logs ``acked <id>`` lines
(flush + fsync each time) and is SIGKILLed in the middle of a batch: after logging it as leased,
before acking it. It is restarted with a new log and runs until the queue is empty.

Then: every id was acked at least once (no loss), no id was leased again after a line
``acked <id>`` (an ack is final, even across the producer's replay), and the queue is empty.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dps.queues import QueueSpec, open_queue

WORKER = Path(__file__).with_name("queue_worker.py")
NATS_URL = os.environ.get("DPS_TEST_NATS_URL", "nats://127.0.0.1:4222")
STREAM_PREFIX = "DPSTEST"
COUNT = 3000
LINE = re.compile(r"(leased|acked) (m\d{5})\n")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("nats", id="nats", marks=pytest.mark.nats),
    # The stage queues' frames: 25 records a message, two whole frames a lease.
    pytest.param("nats-packed", id="nats-packed", marks=pytest.mark.nats),
]
PACK = "25"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {what}.")
        time.sleep(0.01)


def count_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def log_lines(path: Path) -> list[tuple[str, str]]:
    """(verb, id) of each complete line; a line cut short by SIGKILL is not a complete line."""
    text = path.read_text() if path.exists() else ""
    return [(m.group(1), m.group(2)) for m in LINE.finditer(text)]


def delete_nats_stream(name: str) -> None:
    import asyncio

    import nats
    import nats.errors
    import nats.js.errors

    async def run() -> None:
        try:
            nc = await asyncio.wait_for(
                nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False), timeout=5
            )
        except (OSError, TimeoutError, nats.errors.Error):
            return  # the server is down: the test has failed already, nothing to clean up
        try:
            await nc.jetstream().delete_stream(f"{STREAM_PREFIX}_{name}".upper())
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(run())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def queue_name(backend: str) -> Iterator[str]:
    name = f"crash{uuid.uuid4().hex[:10]}"
    yield name
    if backend.startswith("nats"):
        delete_nats_stream(name)


@pytest.mark.timeout(90)
def test_kill_9_loses_nothing_and_redelivers_nothing_after_ack(
    backend: str, queue_name: str, tmp_path: Path
) -> None:
    processes: list[subprocess.Popen[bytes]] = []

    def start(role: str, *extra: str) -> subprocess.Popen[bytes]:
        server = backend.removesuffix("-packed")
        command = [sys.executable, str(WORKER), role, "--backend", server, "--name", queue_name]
        if backend.endswith("-packed"):
            command += ["--pack", PACK]
        command += ["--data-dir", str(tmp_path), "--nats-url", NATS_URL]
        command += ["--stream-prefix", STREAM_PREFIX, "--count", str(COUNT), *extra]
        process = subprocess.Popen(command, stderr=subprocess.PIPE)
        processes.append(process)
        return process

    def kill(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)  # reaps it and closes its stderr pipe

    def finish(process: subprocess.Popen[bytes], timeout: float) -> None:
        _, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, stderr.decode(errors="replace")

    progress, hang, done = tmp_path / "progress", tmp_path / "hang", tmp_path / "done"
    logs = [tmp_path / "consumer-1.log", tmp_path / "consumer-2.log"]
    try:
        producer = start(
            "produce", "--batch", "100", "--pause", "0.03", "--progress", str(progress)
        )
        consumer = start(
            "consume", "--batch", "50", "--log", str(logs[0]), "--done-file", str(done),
            "--hang-after", "6", "--hang-file", str(hang),
        )  # fmt: skip

        # The producer dies at a random moment after a third of the batches, maybe mid-put.
        wait_for(lambda: count_lines(progress) >= 10, 30, "the producer's 10th batch")
        time.sleep(random.uniform(0, 0.03))
        kill(producer)
        assert count_lines(progress) < COUNT // 100, "the producer finished before the kill"

        # The consumer dies between logging its 6th batch as leased and acking it.
        wait_for(hang.exists, 30, "the consumer to reach the middle of its 6th batch")
        kill(consumer)
        first_run = log_lines(logs[0])
        assert first_run[-1][0] == "leased"

        finish(start("produce", "--batch", "100"), timeout=60)
        done.touch()
        consumer = start(
            "consume", "--batch", "50", "--log", str(logs[1]), "--done-file", str(done)
        )
        finish(consumer, timeout=60)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                process.communicate(timeout=10)

    events = first_run + log_lines(logs[1])
    acked: set[str] = set()
    leased_after_ack = []
    for verb, msg_id in events:
        if verb == "acked":
            acked.add(msg_id)
        elif msg_id in acked:
            leased_after_ack.append(msg_id)
    expected = {f"m{n:05d}" for n in range(COUNT)}
    assert expected - acked == set(), "messages were lost"
    assert acked <= expected
    assert leased_after_ack == [], "messages were delivered again after their ack"
    # The batch the consumer died in came back to the restarted consumer.
    assert {msg_id for verb, msg_id in first_run[-50:] if verb == "leased"} <= acked

    server = backend.removesuffix("-packed")
    settings = {"url": NATS_URL, "stream_prefix": STREAM_PREFIX} if server == "nats" else {}
    with open_queue(server, settings, tmp_path, QueueSpec(name=queue_name)) as queue:
        assert queue.depth() == 0
