"""A producer or consumer process for the queue crash test (``test_queue_crash.py``).

Run as ``python queue_worker.py produce|consume --backend B --name Q --data-dir D ...``. The
test SIGKILLs these processes and restarts them; everything they report goes through files
written with flush + fsync, so what the test reads is what happened before the kill.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from dps.queues import QueueSpec, open_queue

VISIBILITY_TIMEOUT = 2.0


def settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.backend == "nats":
        return {
            "url": args.nats_url,
            "stream_prefix": args.stream_prefix,
            "records_per_message": max(1, args.pack),
        }
    return {}


def queue_spec(args: argparse.Namespace) -> QueueSpec:
    return QueueSpec(
        name=args.name, visibility_timeout=VISIBILITY_TIMEOUT, max_attempts=100, pack=args.pack > 1
    )


def msg_id(number: int) -> str:
    return f"m{number:05d}"


def append_lines(handle: Any, lines: list[str]) -> None:
    handle.write("".join(f"{line}\n" for line in lines))
    handle.flush()
    os.fsync(handle.fileno())


def produce(args: argparse.Namespace) -> None:
    """Put ``count`` messages in batches, from the start: idempotent put makes a rerun safe."""
    spec = queue_spec(args)
    with (
        open_queue(args.backend, settings(args), Path(args.data_dir), spec) as queue,
        open(args.progress or os.devnull, "a") as progress,
    ):
        for start in range(0, args.count, args.batch):
            numbers = range(start, min(start + args.batch, args.count))
            queue.put([(msg_id(n), f"payload {n}".encode()) for n in numbers], timeout=30)
            if args.progress:
                append_lines(progress, [f"put {start}"])
            time.sleep(args.pause)


def consume(args: argparse.Namespace) -> None:
    """Lease, log ``leased <id>``, ack, log ``acked <id>``; stop when told and the queue is empty.

    With ``--hang-after K`` it stops between logging the K-th batch as leased and acking it, and
    touches ``--hang-file``: the test kills it there, in the middle of a batch.
    """
    spec = queue_spec(args)
    done = Path(args.done_file)
    batches = 0
    with (
        open_queue(args.backend, settings(args), Path(args.data_dir), spec) as queue,
        open(args.log or os.devnull, "a") as log,
    ):
        while True:
            lease = queue.lease(args.batch, wait=0.2)
            if not lease:
                if done.exists() and queue.depth() == 0:
                    return
                continue
            if args.log:
                append_lines(log, [f"leased {m.msg_id}" for m in lease.messages])
            batches += 1
            if batches == args.hang_after:
                Path(args.hang_file).touch()
                time.sleep(3600)
            queue.ack(lease)
            if args.log:
                append_lines(log, [f"acked {m.msg_id}" for m in lease.messages])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["produce", "consume"])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream-prefix", default="DPSTEST")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--progress", default="")
    parser.add_argument("--log", required=False, default="")
    parser.add_argument("--done-file", default="")
    parser.add_argument("--hang-after", type=int, default=0)
    parser.add_argument("--hang-file", default="")
    parser.add_argument("--pack", type=int, default=0, help="records per frame (nats)")
    args = parser.parse_args(argv)
    if args.role == "produce":
        produce(args)
    else:
        consume(args)


if __name__ == "__main__":
    main(sys.argv[1:])
