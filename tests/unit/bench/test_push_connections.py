"""The latency run's HTTP client: keep-alive reuse, a reused connection the server has since
closed, and answers other than 200 reported as failures."""

from __future__ import annotations

import asyncio

from dps.bench.runner import _PushConnections


async def _serve(
    answers: list[bytes], *, close_after_answer: bool
) -> tuple[asyncio.Server, list[bytes]]:
    """An HTTP/1.1 server answering each POST with the next of ``answers``; it records the
    bodies it got and, if asked, closes every connection after its answer without saying so."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            seen.append(await reader.readexactly(length))
            writer.write(answers[len(seen) - 1])
            await writer.drain()
            if close_after_answer:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


def _answer(status: str, body: bytes = b"{}", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _run(
    answers: list[bytes], bodies: list[bytes], *, close_after_answer: bool
) -> tuple[_PushConnections, list[bytes]]:
    async def main() -> tuple[_PushConnections, list[bytes]]:
        server, seen = await _serve(answers, close_after_answer=close_after_answer)
        port = server.sockets[0].getsockname()[1]
        pool = _PushConnections(f"http://127.0.0.1:{port}/ingest")
        for body in bodies:
            await pool.post(body)
            await asyncio.sleep(0.01)  # the server's close reaches the client first
        pool.close()
        server.close()
        await server.wait_closed()
        return pool, seen

    return asyncio.run(main())


def test_sequential_posts_share_one_kept_alive_connection() -> None:
    pool, seen = _run([_answer("200 OK")] * 3, [b"a\n", b"b\n", b"c\n"], close_after_answer=False)
    assert seen == [b"a\n", b"b\n", b"c\n"]
    assert pool.failures == []
    assert len(pool._all) == 1


def test_a_reused_connection_the_server_closed_is_replaced_and_the_post_goes_through() -> None:
    pool, seen = _run([_answer("200 OK")] * 3, [b"a\n", b"b\n", b"c\n"], close_after_answer=True)
    assert seen == [b"a\n", b"b\n", b"c\n"]
    assert pool.failures == []
    assert len(pool._all) == 3


def test_answers_other_than_200_are_failures_with_their_status_and_body() -> None:
    answers = [_answer("200 OK"), _answer("429 Too Many Requests", b'{"error": "full"}')]
    pool, seen = _run(answers, [b"a\n", b"b\n"], close_after_answer=False)
    assert len(seen) == 2
    assert pool.failures == ['429 Too Many Requests b\'{"error": "full"}\'']


def test_connection_close_answers_are_not_reused() -> None:
    answers = [_answer("200 OK", extra="Connection: close\r\n")] * 2
    pool, seen = _run(answers, [b"a\n", b"b\n"], close_after_answer=True)
    assert seen == [b"a\n", b"b\n"]
    assert pool.failures == []
    assert len(pool._all) == 2


def test_a_refused_connection_is_a_failure() -> None:
    async def main() -> _PushConnections:
        server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = _PushConnections(f"http://127.0.0.1:{port}/ingest")
        await pool.post(b"a\n")
        return pool

    pool = asyncio.run(main())
    assert len(pool.failures) == 1
    assert "ConnectionRefusedError" in pool.failures[0]
