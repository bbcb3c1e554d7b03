"""The scale-out queue backend: one NATS JetStream stream per queue, one durable pull consumer.

Mapping of the queue contract (``dps.queues.base``) onto JetStream:

- queue ``transform`` -> stream ``DPS_TRANSFORM`` on subject ``dps.transform`` (the prefix is
  ``stream_prefix``), work-queue retention (an acked message is removed from the stream), file
  storage, ``max_msgs = capacity`` with discard ``new``: a full stream refuses publishes, and
  ``put`` retries until its timeout, then raises ``QueueFullError``.
- idempotent put: every message is published with ``Nats-Msg-Id: <msg_id>``; the server drops
  an id it has seen within ``duplicate_window`` seconds, even when that message was acked since.
- lease: a durable pull consumer named ``spec.consumer`` with explicit acks and
  ``ack_wait = visibility_timeout``; a message not acked in time is redelivered. ``attempts``
  is the server's delivery count; ``max_deliver`` is unlimited because we dead-letter ourselves
  with the same rules as the ``sqlite`` backend (the server would otherwise drop the message
  silently instead of giving it to the stage's DLQ).
- ack waits for the server's confirmation (``ack_sync``), so a returned ``ack`` is recorded.
- frames: a queue opened with ``QueueSpec.pack`` (the stage queues) publishes up to
  ``records_per_message`` records per message, on ``<subject>.<records>``: the server's and
  nats-py's work is per message, so per frame. Records of a frame share its server message:
  it is acked once all of them are settled, and the put is idempotent per batch (a frame's id
  hashes its record ids). Depth counts records from the per-subject counts. See
  ``docs/queues.md``, *Frames*.

Durability: JetStream writes each message to its file store before the PubAck, but fsyncs
lazily, every ``sync_interval`` (two minutes by default), unless the server runs with
``jetstream { sync_interval: always }``. With the default, a kill -9 of the *server* process
loses nothing (the OS has the data), a power loss or kernel crash of the server host can lose up
to ``sync_interval`` of acknowledged messages. ``describe()`` reports the server's setting when
``monitor_url`` points at its monitoring port. See DESIGN.md section 3 and ``docs/queues.md``.

The queue interface is synchronous and nats-py is asyncio: each backend instance runs one event
loop in a daemon thread and calls into it with ``run_coroutine_threadsafe``. The first ``open``
connects; closing the last queue of the instance drains the connection and stops the thread.

Why the pull loop is by hand: nats-py's ``PullSubscription.fetch`` refuses a zero wait, and for
a batch it keeps waiting for the whole batch until the request expires once a first message has
arrived, so ``lease(100, wait=5)`` on a trickle would take 5 s. ``lease`` here sends a
``no_wait`` request for what is there now and, only when nothing is, one lingering request for
a single message followed by another ``no_wait`` for the rest. The server ends every request
(status 404/408, or the batch is complete), so no request is left open to capture messages. A
lingering request whose 408 has not come 50 ms after its expiry is given up on (see
``_LINGER_GRACE``); what the server still sends it lands in the same inbox for the next pull. A
wait under 50 ms sends no lingering request at all: ``no_wait`` requests every millisecond.

``nats`` is imported inside functions (house rule 13): the registry imports this module in every
process, including those that run on the ``sqlite`` backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from dps.core.errors import ConfigError, DpsError, QueueFullError, TransientError
from dps.core.registry import register
from dps.queues.base import (
    Lease,
    Message,
    Queue,
    QueueBackend,
    QueueSpec,
    backend_settings,
    check_queue_name,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Reason given to the dead-letter sink for a message delivered once more after its last attempt.
REASON_MAX_ATTEMPTS = "max_attempts_exceeded"

#: JetStream error code of a publish refused because the stream holds ``max_msgs``.
ERR_MAX_MSGS = 10077
#: JetStream error code of a create for a stream that exists with another configuration.
ERR_STREAM_EXISTS = 10058

_POLL_FIRST = 0.005
_POLL_MAX = 0.1

#: How long past its expiry a lingering pull request is waited for. The server ends such a
#: request with a 408 status when it expires, but nats-server before 2.9.15 could drop a
#: request that expired in the middle of handing out messages without that answer (fixed by
#: nats-io/nats-server#3942; seen here on 2.9.10 with Gamma's 5 ms requests): the lease then
#: waited out ``request_timeout`` (5 s) while messages piled up in the stream, and at 1,000
#: records/s the pipeline's P50 latency on NATS was 2.6 s. Messages the server still sends to a
#: request given up on reach the same inbox and are taken by the next pull.
_LINGER_GRACE = 0.05

#: A lease waiting less than this polls with ``no_wait`` requests every ``_SHORT_POLL`` s
#: instead of sending one lingering request (Gamma waits 5 ms while batches are in flight).
_SHORT_WAIT = 0.05
_SHORT_POLL = 0.001


DURABILITY_NOTE = (
    "JetStream stores each message before acknowledging it but fsyncs lazily (every "
    "sync_interval, 2 minutes by default) unless the server runs with "
    "'jetstream { sync_interval: always }': a power loss of the server host can lose "
    "acknowledged messages of the last sync_interval; a process crash loses none."
)


class NatsQueueSettings(BaseModel):
    """The ``transport`` section of ``pipeline.yaml`` when ``backend: nats``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["nats"] | None = Field(
        default=None,
        description="The backend name; accepted so the whole `transport` section can be passed.",
    )
    url: str = Field(
        default="nats://127.0.0.1:4222",
        description="NATS server URL; several may be given separated by commas (a cluster).",
    )
    stream_prefix: str = Field(
        default="DPS",
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="Streams are named `<PREFIX>_<QUEUE>` on subjects `<prefix>.<queue>`.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to reach the server before giving up on open."
    )
    request_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to wait for the server's answer to one request."
    )
    duplicate_window: float = Field(
        default=120.0,
        gt=0,
        description="Seconds the server remembers a message id to drop a re-published duplicate.",
    )
    replicas: int = Field(
        default=1, ge=1, le=5, description="Stream replicas (JetStream clustering)."
    )
    records_per_message: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description=(
            "Records packed into one message on the stage queues (transform, delivery); 1 "
            "publishes one message per record. See docs/queues.md, Frames."
        ),
    )
    monitor_url: str | None = Field(
        default=None,
        description=(
            "The server's HTTP monitoring endpoint (e.g. http://127.0.0.1:8222); when set, "
            "`describe()` reports the server's JetStream sync setting from `/varz`."
        ),
    )


def _delivered(msg: Any) -> int:
    """How many times the server has delivered ``msg``, read from its reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``
    (or the 12-token form with domain and account hash in front). ``msg.metadata`` parses
    every field into objects, which costs more than the rest of handing the message out.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[4])
    if len(tokens) >= 12:
        return int(tokens[6])
    return int(msg.metadata.num_delivered)


def _redact(url: str) -> str:
    """The URL(s) without user names, passwords or tokens, for logs and ``describe()``."""
    parts = []
    for one in url.split(","):
        parsed = urllib.parse.urlsplit(one.strip())
        host = parsed.hostname or ""
        netloc = f"{host}:{parsed.port}" if parsed.port else host
        parts.append(urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", "")))
    return ",".join(parts)


def _api_code(exc: BaseException) -> int | None:
    code = getattr(exc, "err_code", None)
    return code if isinstance(code, int) else None


class _LoopThread:
    """An asyncio event loop running in a daemon thread; coroutines are submitted from others."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Cancel what is still running on the loop, stop it and join the thread."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            try:
                self.submit(cancel_all()).result(timeout=5.0)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                log.warning("NATS event loop tasks did not stop in time.")
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5.0)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass(slots=True)
class _Delivery:
    """One message delivered to our inbox, and when (the server's ack_wait runs from then)."""

    arrived: float
    msg: Any


@dataclass(slots=True)
class _Publishing:
    """One put's publishes and the PubAcks answered so far (see ``NatsQueue._publish``)."""

    tag: str
    left: int
    done: asyncio.Future[None]
    refused: int = 0
    errors: list[str] = field(default_factory=list)

    def answer(self, msg: Any) -> None:
        """Count one PubAck: stored, a duplicate dropped, refused for room, or an error."""
        data = msg.data
        if not data or b'"error"' in data:
            if not data:  # a status without a body: 503, no stream listens on the subject
                status = (msg.headers or {}).get("Status", "?")
                self.errors.append(f"status {status}: no stream stores the subject")
            else:
                error = json.loads(data).get("error") or {}
                if error.get("err_code") == ERR_MAX_MSGS:
                    self.refused += 1
                else:
                    self.errors.append(
                        f"{error.get('description', data.decode(errors='replace'))}"
                        f" (code {error.get('code')}, err_code {error.get('err_code')})"
                    )
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)


#: Headers of a packed message (a *frame*, see ``docs/queues.md``): how many records it holds;
#: for a frame republished by a partial nack, the delivery attempts its records had already
#: made and the Unix time before which it is not handed out.
H_RECORDS = "Dps-Records"
H_ATTEMPTS = "Dps-Attempts"
H_VISIBLE_AT = "Dps-Visible-At"

#: A frame's payload stays under this size (nats-server's default ``max_payload`` is 1 MiB); a
#: record larger than it travels alone in its frame.
FRAME_BYTES = 512 * 1024

_Pairs = list[tuple[str, bytes]]
_frame_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def frame_id(ids: Sequence[str], salt: str = "") -> str:
    """The ``Nats-Msg-Id`` of a frame: a hash of its record ids in order (and of ``salt``), so
    that a put retried with the same batch publishes frames the server drops as duplicates."""
    text = salt + "\x00\x00" + "\x00".join(ids) if salt else "\x00".join(ids)
    return "frame-" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def unpack(headers: dict[str, str] | None, data: bytes, msg_id: str) -> _Pairs:
    """The ``(msg_id, body)`` records of a stream message: a frame's, or the plain message
    itself (``msg_id`` is then its id).

    A frame that does not decode is handed on as one message, its bytes as they are: the
    stage that decodes it then dead-letters it with its reason, so nothing is lost or stuck.
    """
    if headers and H_RECORDS in headers:
        try:
            return _frame_decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("A NATS frame did not decode; handed on whole.", extra={"id": msg_id})
    return [(msg_id, data)]


def cut_frames(pairs: _Pairs, most: int, max_bytes: int = FRAME_BYTES) -> list[_Pairs]:
    """Cut a batch into frames of at most ``most`` records and about ``max_bytes`` bytes, in
    order; the same batch is always cut the same way."""
    frames: list[_Pairs] = []
    current: _Pairs = []
    size = 0
    for pair in pairs:
        n = len(pair[0]) + len(pair[1]) + 8
        if current and (len(current) >= most or size + n > max_bytes):
            frames.append(current)
            current, size = [], 0
        current.append(pair)
        size += n
    if current:
        frames.append(current)
    return frames


@dataclass(slots=True, eq=False)
class _Frame:
    """One server message as leased: a frame of packed records, or one plain record.

    Its records share one server message, so they share its fate: the message is acked (or
    nacked) on the server once every record of it handed out is settled.
    """

    msg: Any
    key: str
    arrived: float
    expires: float
    attempts: int
    size: int
    #: Records not handed out yet (a frame larger than the lease that took it).
    rest: _Pairs
    outstanding: int
    acked: int = 0
    #: Records nacked, with their delay: republished, or the whole message nacked.
    redo: list[tuple[str, bytes, float]] = field(default_factory=list)
    #: Settled after its lease ran out: left to the server, which redelivers it.
    abandoned: bool = False

    def settle(self, *, acked: bool) -> bool:
        """Count one of its records settled (acked or dead-lettered, else nacked or given up);
        True when it was the last one outstanding."""
        if acked:
            self.acked += 1
        self.outstanding -= 1
        return self.outstanding == 0


@dataclass(slots=True)
class _Handle:
    """What a lease remembers: the frame of each message id, and which ids are settled."""

    frames: dict[str, _Frame] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)


@register("queues", "nats")
class NatsBackend(QueueBackend):
    """Queues as JetStream streams on a NATS server; the scale-out backend."""

    Config = NatsQueueSettings

    def __init__(self, settings: dict[str, Any], data_dir: Path) -> None:
        self.config = backend_settings(NatsQueueSettings, settings)
        self.url = _redact(self.config.url)
        self._lock = threading.RLock()
        self._runner: _LoopThread | None = None
        self._nc: Any = None
        self._js: Any = None
        self._queues: set[NatsQueue] = set()
        self._closing = False

    # ------------------------------------------------------------ plumbing

    def stream_name(self, queue: str) -> str:
        """The stream that holds queue ``queue``: ``<PREFIX>_<QUEUE>``."""
        return f"{self.config.stream_prefix}_{check_queue_name(queue)}".upper()

    def subject(self, queue: str) -> str:
        """The subject messages of queue ``queue`` are published on: ``<prefix>.<queue>``."""
        return f"{self.config.stream_prefix}.{check_queue_name(queue)}".lower()

    @property
    def js(self) -> Any:
        """The JetStream context (valid while connected)."""
        return self._js

    @property
    def nc(self) -> Any:
        """The NATS connection (valid while connected)."""
        return self._nc

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        """Run ``coro`` on the backend's loop; report NATS and network failures as transient."""
        import nats.errors

        runner = self._runner
        if runner is None:
            coro.close()
            raise TransientError(f"NATS queue backend ({self.url}) is closed; cannot {what}.")
        future = runner.submit(coro)
        try:
            return future.result(timeout)
        except DpsError:
            raise
        except (TimeoutError, concurrent.futures.CancelledError) as exc:
            future.cancel()
            raise TransientError(
                f"NATS at {self.url} did not answer in time; could not {what}."
            ) from exc
        except (nats.errors.Error, OSError) as exc:
            raise TransientError(f"NATS at {self.url}: could not {what}: {exc}") from exc

    def _connect(self) -> None:
        """Start the loop thread and connect (under ``self._lock``)."""
        if self._nc is not None:
            return
        self._closing = False
        self._runner = _LoopThread(name=f"dps-nats-{id(self):x}")
        try:
            self._nc = self.call(
                self._open_connection(), self.config.connect_timeout + 1.0, "connect"
            )
        except TransientError as exc:
            self._shutdown()
            raise TransientError(
                f"NATS server at {self.url} is not reachable (no connection within "
                f"{self.config.connect_timeout:g} s); the queue is not opened. Check "
                "transport.url in pipeline.yaml and that nats-server runs with JetStream (-js)."
            ) from exc
        except BaseException:
            self._shutdown()
            raise
        self._js = self._nc.jetstream(timeout=self.config.request_timeout)

    async def _open_connection(self) -> Any:
        import nats

        url = self.url

        async def on_error(exc: Exception) -> None:
            log.warning("NATS connection error.", extra={"url": url, "error": str(exc)})

        async def on_disconnected() -> None:
            if not self._closing:
                log.warning("NATS connection lost; reconnecting.", extra={"url": url})

        async def on_reconnected() -> None:
            log.info("NATS connection re-established.", extra={"url": url})

        servers = [one.strip() for one in self.config.url.split(",")]
        # Reconnect forever once connected: a server restart must not end a long-running
        # module; meanwhile each call fails with TransientError after request_timeout. The
        # first connect is bounded by wait_for instead.
        return await asyncio.wait_for(
            nats.connect(
                servers=servers,
                name="dps-queues",
                connect_timeout=self.config.connect_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1.0,
                drain_timeout=int(max(self.config.request_timeout, 1)),
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                # Every subject this backend publishes on is built here from checked names
                # (check_queue_name, the stream_prefix pattern) or given by the server (acks,
                # inboxes): no per-publish regular expression over each subject and reply.
                skip_subject_validation=True,
            ),
            timeout=self.config.connect_timeout,
        )

    def _shutdown(self) -> None:
        """Drain the connection and stop the loop thread (under ``self._lock``)."""
        runner, nc = self._runner, self._nc
        self._runner = self._nc = self._js = None
        if runner is None:
            return
        self._closing = True
        if nc is not None:
            try:
                runner.submit(nc.drain()).result(self.config.request_timeout + 1.0)
            except Exception as exc:  # closing anyway; nothing left to retry
                log.warning("NATS connection did not drain cleanly.", extra={"error": str(exc)})
        runner.stop()

    def _release(self, queue: NatsQueue) -> None:
        with self._lock:
            self._queues.discard(queue)
            if not self._queues:
                self._shutdown()

    # ------------------------------------------------------------ contract

    def open(self, spec: QueueSpec) -> NatsQueue:
        """Create or update the queue's stream and durable consumer, then subscribe."""
        with self._lock:
            self._connect()
            queue = NatsQueue(self, spec)
            try:
                timeout = 3 * self.config.request_timeout + 1.0
                self.call(queue._setup(), timeout, f"open queue {spec.name!r}")
            except BaseException:
                if not self._queues:
                    self._shutdown()
                raise
            self._queues.add(queue)
            return queue

    def close(self) -> None:
        """Close every queue opened through this instance and the connection."""
        with self._lock:
            for queue in list(self._queues):
                queue.close()
            self._shutdown()

    def describe(self) -> dict[str, Any]:
        """URL, streams under the prefix with their depth, server version and sync setting."""
        with self._lock:
            self._connect()
            try:
                streams = self.call(self._list_streams(), self.config.request_timeout + 1.0, "list")
                server = self._nc.connected_server_version
                version = f"{server.major}.{server.minor}.{server.patch}"
            finally:
                if not self._queues:
                    self._shutdown()
        return {
            "backend": "nats",
            "url": self.url,
            "stream_prefix": self.config.stream_prefix,
            "server_version": version,
            "streams": streams,
            "sync_interval": self._sync_interval(),
            "durability": DURABILITY_NOTE,
        }

    async def _list_streams(self) -> list[dict[str, Any]]:
        prefix = f"{self.config.stream_prefix.upper()}_"
        found = []
        for info in await self._js.streams_info():
            if info.config.name.startswith(prefix):
                found.append(
                    {
                        "name": info.config.name,
                        "subjects": info.config.subjects,
                        "messages": info.state.messages,
                        "max_msgs": info.config.max_msgs,
                        "consumers": info.state.consumer_count,
                    }
                )
        return found

    def _sync_interval(self) -> str:
        """The server's JetStream sync setting, read from its monitoring endpoint's ``/varz``."""
        if not self.config.monitor_url:
            return "unknown (set transport.monitor_url to read it from the server)"
        url = self.config.monitor_url.rstrip("/") + "/varz"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                varz = json.load(response)
        except (OSError, ValueError) as exc:
            return f"unknown ({url} could not be read: {exc})"
        config = (varz.get("jetstream") or {}).get("config") or {}
        if config.get("sync_always"):
            return "always"
        if "sync_interval" in config:
            return str(config["sync_interval"])
        return "default (2 min); this server version does not report it"


class NatsQueue(Queue):
    """One queue: a JetStream stream plus this instance's pull subscription on its consumer."""

    def __init__(self, backend: NatsBackend, spec: QueueSpec) -> None:
        self.spec = spec
        self._backend = backend
        self._config = backend.config
        self.stream = backend.stream_name(spec.name)
        self.subject = backend.subject(spec.name)
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{spec.consumer}"
        self._inbox = ""
        self._sub: Any = None
        #: PubAcks come back on ``<_acks>.<put tag>.<n>``; ``_publishing`` is the put waiting.
        self._acks = ""
        self._acks_sub: Any = None
        self._publishing: _Publishing | None = None
        self._puts = itertools.count(1)
        self._deliveries: asyncio.Queue[_Delivery] | None = None
        self._tokens = itertools.count(1)
        self._closed = False
        # The server starts ack_wait when it sends; we see the message a little later. Treat
        # a lease as over a bit early so that we never nack a message someone else now holds.
        self._lease_span = spec.visibility_timeout - min(1.0, spec.visibility_timeout * 0.1)
        #: Records per published message: frames on a queue opened with ``pack``.
        self._per_message = self._config.records_per_message if spec.pack else 1
        #: The largest frame leased so far (0: none yet), to size pull requests.
        self._largest = 0
        #: Frames larger than the lease that took them: their other records, for the next.
        self._carry: list[_Frame] = []

    def _call(self, coro: Coroutine[Any, Any, T], what: str, extra: float = 0.0) -> T:
        if self._closed:
            coro.close()
            raise TransientError(f"Queue {self.spec.name!r} is closed; cannot {what}.")
        return self._backend.call(coro, self._config.request_timeout + 1.0 + extra, what)

    # --------------------------------------------------------------- setup

    async def _setup(self) -> None:
        from nats.js.api import (
            AckPolicy,
            ConsumerConfig,
            DeliverPolicy,
            DiscardPolicy,
            RetentionPolicy,
            StorageType,
            StreamConfig,
        )
        from nats.js.errors import APIError

        js = self._backend.js
        stream = StreamConfig(
            name=self.stream,
            # Plain messages on the subject, frames on <subject>.<records>.
            subjects=[self.subject, f"{self.subject}.*"],
            retention=RetentionPolicy.WORK_QUEUE,
            max_msgs=self.spec.capacity,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            num_replicas=self._config.replicas,
            duplicate_window=self._config.duplicate_window,
        )
        try:
            await js.add_stream(stream)
        except APIError as exc:
            if _api_code(exc) != ERR_STREAM_EXISTS:
                raise
            # Same name, other settings (say a new capacity): update in place, keeping messages.
            try:
                await js.update_stream(stream)
            except APIError as update_exc:
                raise ConfigError(
                    f"NATS stream {self.stream} exists with settings that cannot be changed to "
                    f"the ones of queue {self.spec.name!r}: {update_exc.description}. Delete or "
                    "migrate the stream, or use another transport.stream_prefix."
                ) from update_exc
        await js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=self.spec.consumer,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.spec.visibility_timeout,
                deliver_policy=DeliverPolicy.ALL,
                # We dead-letter ourselves (see the module docstring), so no server limit.
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        nc = self._backend.nc
        deliveries: asyncio.Queue[_Delivery] = asyncio.Queue()

        async def on_message(msg: Any) -> None:
            deliveries.put_nowait(_Delivery(time.monotonic(), msg))

        self._deliveries = deliveries
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(f"{self._inbox}.*", cb=on_message)

        async def on_pub_ack(msg: Any) -> None:
            publishing = self._publishing
            # The answer of a put that gave up (timed out) is left alone.
            if publishing is not None and msg.subject.startswith(publishing.tag):
                publishing.answer(msg)

        self._acks = nc.new_inbox()
        self._acks_sub = await nc.subscribe(f"{self._acks}.>", cb=on_pub_ack)

    # ----------------------------------------------------------------- put

    def put(self, messages: Sequence[tuple[str, bytes]], timeout: float | None = None) -> None:
        """Publish the batch with dedupe ids and wait for every PubAck; wait for room first.

        Room is checked before publishing so that a batch is normally stored whole; a stream
        filled meanwhile by another producer refuses part of it, and the whole batch is retried
        (the duplicate window drops the part already stored). A queue opened with ``pack``
        publishes the batch as frames of up to ``records_per_message`` records.
        """
        if self._per_message > 1:
            unique: dict[str, bytes] = {}
            for msg_id, body in messages:
                unique.setdefault(msg_id, body)
            count = len(unique)
            items = self._frames(list(unique.items()))
        else:
            batch = list(messages)
            count = len(batch)
            headers = {"Nats-Expected-Stream": self.stream}
            items = [(self.subject, body, {**headers, "Nats-Msg-Id": i}) for i, body in batch]
        if not items:
            return
        capacity = self.spec.capacity
        if count > capacity:
            raise QueueFullError(
                f"Queue {self.spec.name!r}: a batch of {count} messages can never fit its "
                f"capacity of {capacity}; put smaller batches."
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        step = _POLL_FIRST
        while True:
            if self.depth() + count <= capacity:
                refused = self._call(self._publish(items), f"put {count} messages")
                if not refused:
                    return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueFullError(
                    f"Queue {self.spec.name!r} is full ({capacity} messages) and no room was "
                    f"made within {timeout:g} s; the batch of {count} was not added."
                )
            time.sleep(step if remaining is None else min(step, remaining))
            step = min(step * 2, _POLL_MAX)

    def _frames(
        self,
        pairs: _Pairs,
        *,
        salt: str = "",
        attempts: int = 0,
        visible_at: float | None = None,
    ) -> list[tuple[str, bytes, dict[str, str]]]:
        """The publishes of a packed batch: one per frame, on ``<subject>.<records>``."""
        out = []
        for frame in cut_frames(pairs, self._per_message):
            headers = {
                "Nats-Msg-Id": frame_id([msg_id for msg_id, _ in frame], salt),
                "Nats-Expected-Stream": self.stream,
                H_RECORDS: str(len(frame)),
            }
            if attempts:
                headers[H_ATTEMPTS] = str(attempts)
            if visible_at is not None:
                headers[H_VISIBLE_AT] = f"{visible_at:.3f}"
            out.append((f"{self.subject}.{len(frame)}", _frame_encoder.encode(frame), headers))
        return out

    async def _publish(self, items: list[tuple[str, bytes, dict[str, str]]]) -> int:
        """Publish ``(subject, payload, headers)`` without waiting in between, then wait for
        every PubAck; return how many the stream refused for being full.

        Plain publishes with a reply subject on this queue's own inbox rather than nats-py's
        ``publish_async``: that one makes a task, a future, a random token and a parsed PubAck
        object for every message, 20 µs of CPU against 7.6 here. A PubAck is only parsed when
        it carries an error.
        """
        nc = self._backend.nc
        publishing = _Publishing(
            f"{self._acks}.{next(self._puts)}.",
            len(items),
            asyncio.get_running_loop().create_future(),
        )
        self._publishing = publishing
        try:
            for n, (subject, payload, headers) in enumerate(items):
                await nc.publish(subject, payload, reply=f"{publishing.tag}{n}", headers=headers)
            await asyncio.wait_for(publishing.done, self._config.request_timeout)
        finally:
            self._publishing = None
        if publishing.errors:
            raise TransientError(
                f"NATS at {self._backend.url} refused {len(publishing.errors)} of {len(items)} "
                f"messages put into stream {self.stream}: {publishing.errors[0]}."
            )
        return publishing.refused

    # --------------------------------------------------------------- lease

    def lease(self, max_messages: int, wait: float = 0.0) -> Lease:
        """Take up to ``max_messages`` messages, waiting up to ``wait`` s for the first.

        Messages delivered more than ``max_attempts`` times go to the dead-letter sink with
        reason ``max_attempts_exceeded`` and are removed instead of handed out. A frame is
        handed out whole, or split when it alone is larger than ``max_messages``: its other
        records are kept for the next lease, under the same server lease.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages is {max_messages}; expected at least 1.")
        deadline = time.monotonic() + max(wait, 0.0)
        handle = _Handle()
        out: list[Message] = []
        finished: list[_Frame] = []
        room = self._from_carry(handle, out, max_messages, finished)
        while room > 0:
            remaining = 0.0 if out else max(deadline - time.monotonic(), 0.0)
            # Until a frame was seen, ask for one: the size of the next ones is not known.
            wanted = -(-room // self._largest) if self._largest else 1
            deliveries = self._call(
                self._lease(wanted, remaining),
                "lease messages",
                extra=remaining + 2 * self._config.request_timeout,
            )
            for frame in self._accept(deliveries):
                room = self._hand_out(frame, handle, out, room, finished)
            if not deliveries or (out and len(deliveries) < wanted):
                break  # the queue has nothing more for now
            if not out and time.monotonic() >= deadline:
                break  # all that came was dead-lettered or held back, and the wait is over
        if finished:
            self._finish(finished)
        return Lease(messages=out, handle=handle)

    def _from_carry(
        self, handle: _Handle, out: list[Message], room: int, finished: list[_Frame]
    ) -> int:
        """Hand out the records kept from a frame larger than an earlier lease."""
        carried, self._carry = self._carry, []
        oldest = self._oldest_usable()
        for frame in carried:
            if frame.arrived < oldest:
                continue  # too close to its lease's end: the server will redeliver it
            if room > 0:
                room = self._hand_out(frame, handle, out, room, finished)
            else:
                self._carry.append(frame)
        return room

    def _accept(self, deliveries: list[_Delivery]) -> list[_Frame]:
        """Frames of the deliveries, newest delivery of each; dead-letter the spent ones and
        send back the ones not visible yet."""
        newest: dict[str, tuple[_Delivery, dict[str, str], int]] = {}
        for delivery in deliveries:
            msg = delivery.msg
            headers = msg.headers or {}
            key = headers.get("Nats-Msg-Id") or f"{self.stream}:{msg.metadata.sequence.stream}"
            delivered = _delivered(msg)
            known = newest.get(key)
            if known is None or known[2] < delivered:
                newest[key] = (delivery, headers, delivered)
        frames: list[_Frame] = []
        over: list[_Frame] = []
        held: list[tuple[Any, float]] = []
        now = time.time()
        for key, (delivery, headers, delivered) in newest.items():
            msg = delivery.msg
            records = unpack(headers, msg.data, key)
            if H_RECORDS in headers:
                attempts = int(headers.get(H_ATTEMPTS, 0)) + delivered
                visible_at = headers.get(H_VISIBLE_AT)
                if visible_at is not None:
                    delay = float(visible_at) - now
                    if delay > 0.001:
                        held.append((msg, delay))
                        continue
                    # Likely delivered once before its time and sent back: not an attempt.
                    attempts -= min(1, delivered - 1)
            else:
                attempts = delivered
            self._largest = max(self._largest, len(records))
            frame = _Frame(
                msg,
                key,
                delivery.arrived,
                delivery.arrived + self._lease_span,
                attempts,
                len(records),
                records,
                len(records),
            )
            if self.spec.dead_letter is not None and attempts > self.spec.max_attempts:
                over.append(frame)
            else:
                frames.append(frame)
        if held:
            self._call(self._nak([(msg, delay) for msg, delay in held]), "hold back messages")
        if over:
            spent = [
                Message(msg_id=msg_id, body=body, attempts=frame.attempts)
                for frame in over
                for msg_id, body in frame.rest
            ]
            self._dead_letter(spent, [frame.msg for frame in over], REASON_MAX_ATTEMPTS)
        return frames

    def _hand_out(
        self,
        frame: _Frame,
        handle: _Handle,
        out: list[Message],
        room: int,
        finished: list[_Frame],
    ) -> int:
        """Add the frame's records to the lease, up to ``room``; keep the rest for the next.

        Returns the room left: none once a frame is kept, so that the next lease starts with
        it and the order holds.
        """
        if self._carry or (out and len(frame.rest) > room):
            self._carry.append(frame)  # whole, for the next lease
            return 0
        take, frame.rest = frame.rest[:room], frame.rest[room:]
        for msg_id, body in take:
            if msg_id in handle.frames:
                # The same record twice in one lease (two puts that overlapped): one copy is
                # handed out and the other is settled with it.
                if frame.settle(acked=True):
                    finished.append(frame)
                continue
            handle.frames[msg_id] = frame
            message = Message(msg_id=msg_id, body=body, attempts=frame.attempts)
            handle.messages[msg_id] = message
            out.append(message)
        if frame.rest:
            self._carry.append(frame)
            return 0
        return room - len(take)

    async def _lease(self, max_messages: int, wait: float) -> list[_Delivery]:
        got = await self._pull(max_messages, None)
        if not got and 0 < wait < _SHORT_WAIT:
            # A request lingering a few ms is the one the server may leave unanswered (see
            # _LINGER_GRACE): look again with no_wait requests instead, every millisecond or so.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while not got and (remaining := deadline - loop.time()) > 0:
                await asyncio.sleep(min(_SHORT_POLL, remaining))
                got = await self._pull(max_messages, None)
        elif not got and wait > 0:
            got = await self._pull(1, wait)
            if got and max_messages > 1:
                got += await self._pull(max_messages - 1, None)
        oldest = self._oldest_usable()
        return [d for d in got if d.arrived >= oldest]

    def _oldest_usable(self) -> float:
        """When the oldest delivery still worth handing out arrived. One that waited half its
        lease (in our inbox, left by a request we stopped listening to, or kept from a larger
        frame) may be redelivered to someone else soon: the server is left to do that."""
        return time.monotonic() - self.spec.visibility_timeout / 2

    async def _pull(self, batch: int, linger: float | None) -> list[_Delivery]:
        """One pull request: ``no_wait`` when ``linger`` is None, else wait up to ``linger`` s.

        Returns when ``batch`` messages arrived or the server ended the request (404/408).
        """
        nc = self._backend.nc
        deliveries = self._deliveries
        assert deliveries is not None
        reply = f"{self._inbox}.{next(self._tokens)}"
        request: dict[str, Any] = {"batch": batch}
        if linger is None:
            request["no_wait"] = True
            budget = self._config.request_timeout
        else:
            request["expires"] = int(linger * 1e9)
            budget = linger + min(_LINGER_GRACE, self._config.request_timeout)
        await nc.publish(self._next, json.dumps(request).encode(), reply=reply)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        got: list[_Delivery] = []
        while len(got) < batch:
            try:  # what has arrived is taken at once: wait_for makes a task per call
                delivery = deliveries.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    delivery = await asyncio.wait_for(deliveries.get(), remaining)
                except TimeoutError:
                    break
            status = (delivery.msg.headers or {}).get("Status")
            if not status:
                got.append(delivery)
            elif delivery.msg.subject == reply:
                if status not in ("404", "408"):
                    log.warning(
                        "NATS pull request ended with an unexpected status.",
                        extra={"stream": self.stream, "status": status},
                    )
                break
            # else: the end of an earlier request we stopped waiting for; nothing to do.
        return got

    # ----------------------------------------------------------- ack, nack

    def _chosen(self, lease: Lease, msg_ids: Sequence[str] | None) -> tuple[_Handle, list[str]]:
        handle = lease.handle
        if not isinstance(handle, _Handle):
            raise ValueError("This lease was not handed out by a NATS queue.")
        ids = list(handle.frames) if msg_ids is None else list(msg_ids)
        unknown = [msg_id for msg_id in ids if msg_id not in handle.frames]
        if unknown:
            raise ValueError(f"Message ids {unknown[:5]} are not part of this lease.")
        return handle, [msg_id for msg_id in ids if msg_id not in handle.settled]

    def ack(self, lease: Lease, msg_ids: Sequence[str] | None = None) -> None:
        """Acknowledge and wait for the server's confirmation; the stream then drops them.

        Unlike the sqlite backend, an ack after the lease expired still removes the message
        (the server does not tell deliveries apart): the work was done, so at worst the new
        holder repeats it, which at-least-once allows. A frame is acked once all its records
        are settled.
        """
        handle, ids = self._chosen(lease, msg_ids)
        finished: list[_Frame] = []
        for msg_id in ids:
            handle.settled.add(msg_id)
            frame = handle.frames[msg_id]
            if frame.settle(acked=True):
                finished.append(frame)
        if finished:
            self._finish(finished)

    def nack(
        self, lease: Lease, msg_ids: Sequence[str] | None = None, *, reason: str, delay: float = 0.0
    ) -> list[Message]:
        """Ask for redelivery after ``delay`` s; dead-letter messages out of attempts.

        Messages whose lease has already run out are left alone: the server redelivers them
        anyway, maybe already to another consumer, which a nack must not disturb.
        """
        handle, ids = self._chosen(lease, msg_ids)
        now = time.monotonic()
        finished: list[_Frame] = []
        over: list[Message] = []
        for msg_id in ids:
            frame = handle.frames[msg_id]
            message = handle.messages[msg_id]
            if frame.expires <= now:
                frame.abandoned = True
            elif self.spec.dead_letter is not None and frame.attempts >= self.spec.max_attempts:
                over.append(message)
                continue  # settled once the sink has it
            else:
                frame.redo.append((msg_id, message.body, delay))
            handle.settled.add(msg_id)
            if frame.settle(acked=False):
                finished.append(frame)
        if over:
            self._sink(over, reason)
            for message in over:
                handle.settled.add(message.msg_id)
                frame = handle.frames[message.msg_id]
                if frame.settle(acked=True):
                    finished.append(frame)
        if finished:
            self._finish(finished)
        return over

    def _finish(self, frames: list[_Frame]) -> None:
        """Settle fully settled frames on the server: ack them; nack a frame whose records were
        all nacked with one delay; otherwise republish its nacked records, then ack it."""
        acks: list[Any] = []
        naks: list[tuple[Any, float]] = []
        again: list[tuple[str, bytes, dict[str, str]]] = []
        for frame in frames:
            if frame.abandoned:
                continue
            delays = {delay for _, _, delay in frame.redo}
            if not frame.redo:
                acks.append(frame.msg)
            elif frame.acked == 0 and len(frame.redo) == frame.size and len(delays) == 1:
                naks.append((frame.msg, delays.pop()))
            else:
                for delay in sorted(delays):
                    pairs = [(i, body) for i, body, d in frame.redo if d == delay]
                    again += self._frames(
                        pairs,
                        salt=f"{frame.key}/{frame.attempts}/{delay:g}",
                        attempts=frame.attempts,
                        visible_at=time.time() + delay if delay > 0 else None,
                    )
                acks.append(frame.msg)
        refused = 0
        if again:
            refused = self._call(self._publish(again), f"republish {len(again)} nacked frames")
        if refused:
            raise TransientError(
                f"Queue {self.spec.name!r} is full: the nacked part of a frame could not be "
                "published again; the frame is redelivered when its lease runs out."
            )
        if naks:
            self._call(self._nak(naks), f"nack {len(naks)} messages")
        if acks:
            self._call(self._ack(acks), f"ack {len(acks)} messages")

    async def _ack(self, msgs: list[Any]) -> None:
        """Ack every message, confirmed by the server once for the batch.

        All but the last are plain acks (one publish each, no round trip); the last is a
        double ack that waits for the server's reply. The server handles a connection's
        messages in order, so that reply comes after the earlier acks were applied; if the
        connection broke in between, the double ack fails and the caller retries the ack (or
        the messages are redelivered: at-least-once either way).
        """
        from nats.errors import MsgAlreadyAckdError

        # Acking twice through the same lease is a no-op, as on the sqlite backend.
        for msg in msgs[:-1]:
            try:  # noqa: SIM105 - contextlib.suppress would cost a context manager per message
                await msg.ack()
            except MsgAlreadyAckdError:
                pass
        with contextlib.suppress(MsgAlreadyAckdError):
            await msgs[-1].ack_sync(timeout=self._config.request_timeout)

    async def _nak(self, msgs: list[tuple[Any, float]]) -> None:
        for msg, delay in msgs:
            await msg.nak(delay=delay if delay > 0 else None)
        # A nak gets no reply; the flush round trip makes sure the server has them all before
        # nack returns, so a lease right after sees the redelivery.
        await self._backend.nc.flush(timeout=int(max(self._config.request_timeout, 1)))

    def _sink(self, messages: list[Message], reason: str) -> None:
        """Hand spent messages to the dead-letter sink (in the caller's thread)."""
        sink = self.spec.dead_letter
        assert sink is not None
        sink(messages, reason)

    def _dead_letter(self, messages: list[Message], msgs: list[Any], reason: str) -> None:
        """Hand spent messages to the sink, then ack them away (a crash between redelivers)."""
        self._sink(messages, reason)
        self._call(self._ack(msgs), f"remove {len(msgs)} dead-lettered")

    # --------------------------------------------------------------- other

    def depth(self) -> int:
        """Messages in the stream: work-queue retention removes acked ones."""
        return self._call(self._depth(), "read the queue depth")

    async def _depth(self) -> int:
        """Records in the stream: a frame is published on ``<subject>.<records>``, and the
        server counts the messages of each subject."""
        info = await self._backend.js.stream_info(self.stream, subjects_filter=f"{self.subject}.*")
        depth = int(info.state.messages)
        for subject, count in (info.state.subjects or {}).items():
            records = subject.rpartition(".")[2]
            if records.isdigit():
                depth += (int(records) - 1) * count
        return depth

    def close(self) -> None:
        """Stop this instance's subscription; the last queue closed closes the connection.

        Messages leased and not acked are redelivered by the server after the visibility
        timeout.
        """
        if self._closed:
            return
        for sub in (self._sub, self._acks_sub):
            if sub is None:
                continue
            try:
                self._call(sub.unsubscribe(), "unsubscribe")
            except TransientError as exc:
                log.warning("NATS unsubscribe failed on close.", extra={"error": str(exc)})
        self._closed = True
        self._backend._release(self)
