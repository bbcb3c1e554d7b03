"""``rest_api``: poll an HTTP API (the manual's Runbook A.1 format).

One :meth:`RestApiSource.fetch` is one HTTP request: the first page of a poll, or the next page of
a poll in progress. A poll starts every ``polling.interval_seconds``; its pages follow each other
as fast as Alpha makes them durable. Each page's body is handed to the parser whole (the records
sit at ``parsing.record_path``); the source decodes it too, but only to find the next page and the
newest watermark value.

What is persisted, and when: the position of a poll (the cursor, page or link of the next page,
the watermark the poll started from and the highest value seen so far) is written with
``set_source_state`` in :meth:`commit`, that is, only once the page's records are durable in the
transform queue. A restart therefore re-requests at most the one page that was not committed,
with the same origin (``<endpoint> since=<w> page=<p>``), so its records are recognised as
replays. When a poll ends, the highest value seen becomes the watermark the next poll sends.

Failures never block Alpha's worker: a request that fails for a reason that may pass (connection
error, timeout, 5xx, 429) is retried ``retry_count`` times, after ``Retry-After`` when the server
sends one, else after an exponential backoff (``retry_backoff_ms`` doubling, at most 30 s), by
answering empty fetches until the retry is due. When the retries are used up the fetch raises
:class:`~dps.core.errors.TransientError` (the source shows ``error``) and the next attempt comes
after the polling interval. A 401 makes an OAuth2 source fetch a new token and repeat the request
once.

Auth: ``none``, ``api_key`` (a header), ``basic``, ``bearer`` and ``oauth2`` (client credentials:
the token is cached and fetched again ``token_refresh_margin_seconds`` before it expires, or when
the API answers 401). Secrets are resolved when first used and again after a configuration reload
(:meth:`refresh_credentials`), so rotating the secret behind an unchanged reference works too.

httpx does the HTTP; pagination, retry timing and the token cache are written here because they
must be driven by Alpha's commit and must not sleep in the worker, which client-side retry
libraries (tenacity, httpx transports' retries) do.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import msgspec
from pydantic import Field

from dps.alpha.sources.base import Fetch, RawItem, Source, SourceContext
from dps.config.secrets import SecretRef
from dps.core.errors import DpsError, SecretError, TransientError
from dps.core.logging import get_logger
from dps.core.model import StrictModel
from dps.core.record import get_path
from dps.core.registry import register
from dps.state.base import StateStore

__all__ = ["RestApiConnection", "RestApiSource"]

#: The key of the poll position in the state store, and the position key of the offsets.
STATE_KEY = "rest_api"
POSITION_KEY = "rest_api"
#: Longest backoff between two retries, and longest Retry-After honoured as given.
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 3600.0

_log = get_logger("source.rest_api")
_decode = msgspec.json.Decoder().decode


class AuthConfig(StrictModel):
    """``connection.auth_config:``: the credentials of the chosen ``auth_type``, as references."""

    token_url: str | None = Field(default=None, description="OAuth2 token endpoint.")
    client_id_ref: SecretRef | None = Field(default=None, description="OAuth2 client id.")
    client_secret_ref: SecretRef | None = Field(default=None, description="OAuth2 client secret.")
    scope: str | None = Field(default=None, description="OAuth2 scope, if the API needs one.")
    token_refresh_margin_seconds: float = Field(
        default=60,
        ge=0,
        description="An OAuth2 token is fetched again this long before it expires (at most "
        "half its lifetime).",
    )
    api_key_ref: SecretRef | None = Field(default=None, description="API key (auth_type api_key).")
    header: str = Field(default="X-API-Key", description="Header carrying the API key.")
    username_ref: SecretRef | None = Field(default=None, description="Basic auth user.")
    password_ref: SecretRef | None = Field(default=None, description="Basic auth password.")
    token_ref: SecretRef | None = Field(default=None, description="Bearer token.")


class PaginationConfig(StrictModel):
    """``connection.pagination:``: how the pages of one poll are requested."""

    type: Literal["none", "cursor", "page", "link"] = Field(
        default="none",
        description="none: one request per poll; cursor: the response names the next cursor; "
        "page: numbered pages; link: the Link header's rel=next URL (RFC 8288).",
    )
    cursor_path: str = Field(
        default="next_cursor",
        description="Dotted path of the next cursor in the response body (cursor); an empty or "
        "missing value ends the poll.",
    )
    cursor_param: str = Field(default="cursor", description="Query parameter of the cursor.")
    page_param: str = Field(default="page", description="Query parameter of the page number.")
    start_page: int = Field(default=1, ge=0, description="Number of the first page.")
    size_param: str | None = Field(
        default=None,
        description="Query parameter sent with polling.batch_size (page size), if the API has one.",
    )
    max_pages: int = Field(
        default=10000, ge=1, description="Pages one poll requests at most (a guard against loops)."
    )


class IncrementalConfig(StrictModel):
    """``connection.incremental:``: ask only for records newer than the last poll's."""

    field: str = Field(description="Dotted path of the record field that grows (updated_at, id).")
    param: str = Field(description="Query parameter that receives the watermark (since).")
    initial_value: str | None = Field(
        default=None, description="Watermark of the first poll (none: the parameter is left out)."
    )


class RestApiConnection(StrictModel):
    """``connection:`` of a ``rest_api`` source."""

    endpoint: str = Field(description="URL polled for records.")
    auth_type: Literal["none", "api_key", "basic", "bearer", "oauth2"] = Field(
        default="none", description="How requests authenticate."
    )
    auth_config: AuthConfig = Field(default_factory=AuthConfig, description="Credentials.")
    timeout_ms: int = Field(
        default=30000,
        ge=1,
        description="Per-request timeout (when not set: CONNECTION_TIMEOUT_MS of alpha.yaml).",
    )
    retry_count: int = Field(
        default=3,
        ge=0,
        description="Retries of a failed request (when not set: MAX_RETRY_COUNT of alpha.yaml).",
    )
    retry_backoff_ms: int = Field(
        default=500, ge=1, description="First retry delay; it doubles per retry (at most 30 s)."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    params: dict[str, str] = Field(
        default_factory=dict, description="Query parameters sent with every request."
    )
    pagination: PaginationConfig = Field(
        default_factory=PaginationConfig, description="Pagination."
    )
    incremental: IncrementalConfig | None = Field(
        default=None, description="Incremental fetching with a persisted watermark."
    )


class NotBuiltError(DpsError):
    """A configured capability whose runtime does not exist yet."""


class _RetryableError(TransientError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Position:
    """Where a poll stands; persisted as JSON in :meth:`RestApiSource.commit`."""

    #: Watermark the next poll sends (the highest value of the last finished poll).
    watermark: str | None = None
    #: The poll in progress: the watermark it sends, the next page, the highest value so far.
    since: str | None = None
    page: str | None = None
    highest: Any = None
    pages: int = 0
    in_poll: bool = False

    def dump(self) -> str:
        return json.dumps(
            {
                "watermark": self.watermark,
                "since": self.since,
                "page": self.page,
                "highest": self.highest,
                "pages": self.pages,
                "in_poll": self.in_poll,
            }
        )

    @classmethod
    def load(cls, text: str | None, initial: str | None) -> _Position:
        if not text:
            return cls(watermark=initial)
        data = json.loads(text)
        return cls(
            watermark=data.get("watermark"),
            since=data.get("since"),
            page=data.get("page"),
            highest=data.get("highest"),
            pages=int(data.get("pages", 0)),
            in_poll=bool(data.get("in_poll")),
        )

    def copy(self) -> _Position:
        return _Position(
            self.watermark, self.since, self.page, self.highest, self.pages, self.in_poll
        )


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    errors: int = 0
    retries: int = 0
    token_refreshes: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    pending: dict[int, _Position] = field(default_factory=dict)


def _newer(a: Any, b: Any) -> bool:
    """``a > b`` for watermark values: numbers as numbers, everything else as text (ISO 8601)."""
    if b is None:
        return a is not None
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a > b
    return str(a) > str(b)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(max(0.0, float(value)), MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER_SECONDS)


class _Auth:
    """The credentials of one source, resolved on first use; an OAuth2 token cache."""

    def __init__(self, connection: RestApiConnection, client: httpx.Client, stats: _Stats) -> None:
        self.kind = connection.auth_type
        self.config = connection.auth_config
        self.client = client
        self.stats = stats
        self._headers: dict[str, str] | None = None
        self._margin = 0.0
        self.token_expires_at: float | None = None

    def forget(self) -> None:
        self._headers = None
        self.token_expires_at = None

    def renew(self) -> bool:
        """Resolve the credentials (fetch a token) now; True when the headers changed.

        On failure the credentials in use are kept, and the error raised.
        """
        kept = (self._headers, self._margin, self.token_expires_at)
        self.forget()
        try:
            headers = self.headers()
        except Exception:
            self._headers, self._margin, self.token_expires_at = kept
            raise
        return kept[0] is not None and headers != kept[0]

    @staticmethod
    def _secret(ref: SecretRef | None, key: str) -> str:
        if ref is None:
            raise TransientError(f"auth_config.{key} is required by this auth_type.")
        try:
            return ref.resolve()
        except SecretError as exc:
            raise TransientError(str(exc)) from None

    def _due(self) -> bool:
        if self._headers is None:
            return True
        if self.kind != "oauth2" or self.token_expires_at is None:
            return False
        lifetime_left = self.token_expires_at - time.time()
        return lifetime_left <= self._margin

    def headers(self) -> dict[str, str]:
        if self._due():
            self._headers = self._build()
        assert self._headers is not None
        return self._headers

    def _build(self) -> dict[str, str]:
        c = self.config
        if self.kind == "none":
            return {}
        if self.kind == "api_key":
            return {c.header: self._secret(c.api_key_ref, "api_key_ref")}
        if self.kind == "bearer":
            return {"Authorization": f"Bearer {self._secret(c.token_ref, 'token_ref')}"}
        if self.kind == "basic":
            auth = httpx.BasicAuth(
                self._secret(c.username_ref, "username_ref"),
                self._secret(c.password_ref, "password_ref"),
            )
            request = next(auth.auth_flow(httpx.Request("GET", "http://x")))
            return {"Authorization": request.headers["Authorization"]}
        return self._oauth2_token()

    def _oauth2_token(self) -> dict[str, str]:
        c = self.config
        if not c.token_url:
            raise TransientError("auth_config.token_url is required by auth_type oauth2.")
        form = {
            "grant_type": "client_credentials",
            "client_id": self._secret(c.client_id_ref, "client_id_ref"),
            "client_secret": self._secret(c.client_secret_ref, "client_secret_ref"),
        }
        if c.scope:
            form["scope"] = c.scope
        try:
            response = self.client.post(c.token_url, data=form)
        except httpx.HTTPError as exc:
            raise _RetryableError(f"OAuth2 token endpoint {c.token_url} failed: {exc!r}.") from None
        if response.status_code != 200:
            raise _RetryableError(
                f"OAuth2 token endpoint {c.token_url} answered {response.status_code}: "
                f"{response.text[:200]}",
                _retry_after(response.headers.get("retry-after")),
            )
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise TransientError(
                f"OAuth2 token endpoint {c.token_url} answered without an access_token."
            ) from None
        lifetime = float(body.get("expires_in") or 3600)
        self.token_expires_at = time.time() + lifetime
        self._margin = min(c.token_refresh_margin_seconds, lifetime / 2)
        self.stats.token_refreshes += 1
        _log.info("OAuth2 token fetched.", expires_in=lifetime)
        return {"Authorization": f"Bearer {token}"}


@register("sources", "rest_api")
class RestApiSource(Source):
    """Polls ``connection.endpoint`` (see the module docstring)."""

    Config = RestApiConnection
    connection: RestApiConnection

    def __init__(
        self,
        source_id: str,
        connection: Any,
        state: StateStore,
        *,
        context: SourceContext | None = None,
    ) -> None:
        super().__init__(source_id, connection, state, context=context)
        c = self.connection
        # A key set in the source's file wins; else alpha.yaml's H.1 key applies.
        given = c.model_fields_set
        self.timeout_ms = (
            c.timeout_ms if "timeout_ms" in given else self.context.connection_timeout_ms
        )
        self.retry_count = c.retry_count if "retry_count" in given else self.context.max_retry_count
        pool = self.context.connection_pool_size
        self._client = httpx.Client(
            timeout=self.timeout_ms / 1000.0,
            headers=c.headers,
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=pool,
                max_keepalive_connections=pool,
                keepalive_expiry=self.context.connection_idle_timeout_ms / 1000.0,
            ),
        )
        self._stats = _Stats()
        self._auth = _Auth(c, self._client, self._stats)
        self._record_path = self._path_of(self.context.record_path)
        offsets = state.offsets(source_id)
        self._seq = max(offsets.values(), default=0)
        # committed: what the state store holds; cursor: where the next fetch asks.
        self._committed = _Position.load(
            state.get_source_state(source_id, STATE_KEY),
            c.incremental.initial_value if c.incremental else None,
        )
        self._cursor = self._committed.copy()
        self._next_poll = 0.0  # a restart polls at once
        self._not_before = 0.0
        self._failures = 0

    @staticmethod
    def _path_of(record_path: str | None) -> Any:
        if not record_path or record_path == "$":
            return None
        import jsonpath

        return jsonpath.compile(record_path)

    # -- requests -----------------------------------------------------------------------------
    def _request(self, url: str, params: dict[str, str]) -> httpx.Response:
        """One GET with auth; a 401 refreshes the credentials and repeats it once."""
        for attempt in (0, 1):
            headers = self._auth.headers()
            self._stats.requests += 1
            try:
                # An empty params would drop the query of a Link URL.
                response = self._client.get(url, params=params or None, headers=headers)
            except httpx.TimeoutException:
                raise _RetryableError(
                    f"{url} did not answer within {self.timeout_ms} ms."
                ) from None
            except httpx.HTTPError as exc:
                raise _RetryableError(f"{url} cannot be reached: {exc!r}.") from None
            self._stats.last_status_code = response.status_code
            if response.status_code == 401 and attempt == 0 and self.connection.auth_type != "none":
                _log.info("API answered 401; fetching credentials again.", source_id=self.source_id)
                self._auth.forget()
                continue
            if response.status_code == 429 or response.status_code >= 500:
                raise _RetryableError(
                    f"{url} answered {response.status_code}.",
                    _retry_after(response.headers.get("retry-after")),
                )
            if response.status_code >= 400:
                raise TransientError(
                    f"{url} answered {response.status_code}: {response.text[:200]!r}; "
                    "check the endpoint, the parameters and the credentials."
                )
            return response
        raise AssertionError("unreachable")

    def _page_request(self, position: _Position) -> tuple[str, dict[str, str], str]:
        """URL, query parameters and origin of the page ``position`` stands at."""
        c = self.connection
        p = c.pagination
        params = dict(c.params)
        if c.incremental is not None and position.since is not None:
            params[c.incremental.param] = position.since
        url = c.endpoint
        if p.type == "link" and position.page:
            url, params = position.page, {}
        elif p.type == "cursor" and position.page:
            params[p.cursor_param] = position.page
        elif p.type == "page":
            params[p.page_param] = position.page or str(p.start_page)
        if p.type in ("page", "cursor") and p.size_param:
            params[p.size_param] = str(self.context.batch_size)
        origin = f"{c.endpoint} since={position.since or ''} page={position.page or ''}"
        return url, params, origin

    def _records(self, body: Any) -> list[Any]:
        if self._record_path is not None:
            matches = self._record_path.findall(body)
            found = matches[0] if len(matches) == 1 else matches
        else:
            found = body
        return found if isinstance(found, list) else [found]

    def _next_page(
        self, position: _Position, response: httpx.Response, body: Any, count: int
    ) -> str | None:
        p = self.connection.pagination
        if p.type == "none" or position.pages + 1 >= p.max_pages:
            return None
        if p.type == "link":
            link = response.links.get("next", {}).get("url")
            return str(response.url.join(link)) if link else None
        if count == 0:
            return None
        if p.type == "cursor":
            cursor = get_path(body, p.cursor_path) if isinstance(body, dict) else None
            return str(cursor) if cursor not in (None, "") else None
        # page
        if p.size_param and count < self.context.batch_size:
            return None
        return str(int(position.page or p.start_page) + 1)

    # -- the Source contract --------------------------------------------------------------------
    def fetch(self, max_items: int) -> Fetch:
        now = time.monotonic()
        if now < self._not_before:
            return Fetch()
        position = self._cursor.copy()
        if not position.in_poll:
            if now < self._next_poll:
                return Fetch()
            position.in_poll = True
            position.since = position.watermark
            position.page = None
            position.pages = 0
            position.highest = None
        url, params, origin = self._page_request(position)
        try:
            response = self._request(url, params)
        except TransientError as exc:
            self._failed(exc)
            return Fetch()
        self._failures = 0
        self._stats.last_error = None
        data = response.content
        try:
            body: Any = _decode(data) if data.strip() else None
        except (msgspec.DecodeError, UnicodeDecodeError):
            body = None
        records = self._records(body) if body is not None else []
        incremental = self.connection.incremental
        if incremental is not None:
            for record in records:
                value = get_path(record, incremental.field) if isinstance(record, dict) else None
                if value is not None and _newer(value, position.highest):
                    position.highest = value
        next_page = self._next_page(position, response, body, len(records))
        out = Fetch()
        if records or (body is None and data.strip()):
            # A body that does not decode is handed out all the same: the parser sends it to the
            # DLQ with the reason, and the poll ends there.
            out.items.append(RawItem(data, origin, POSITION_KEY))
        if next_page is not None:
            position.page = next_page
            position.pages += 1
        else:
            if position.highest is not None and _newer(position.highest, position.watermark):
                position.watermark = str(position.highest)
            position.in_poll = False
            position.since = position.page = position.highest = None
            position.pages = 0
            self._next_poll = now + self.context.poll_interval_seconds
        self._seq += 1
        out.ends[POSITION_KEY] = self._seq
        self._stats.pending[self._seq] = position
        self._cursor = position
        return out

    def _failed(self, exc: TransientError) -> None:
        self._stats.errors += 1
        self._stats.last_error = str(exc)
        self._failures += 1
        if self._failures <= self.retry_count:
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is None:
                retry_after = min(
                    self.connection.retry_backoff_ms / 1000.0 * 2 ** (self._failures - 1),
                    MAX_BACKOFF_SECONDS,
                )
            self._stats.retries += 1
            self._not_before = time.monotonic() + retry_after
            _log.warning(
                "Request failed; retrying.",
                source_id=self.source_id,
                error=str(exc),
                retry_in_seconds=round(retry_after, 3),
                attempt=self._failures,
            )
            return
        self._failures = 0
        retry_after = getattr(exc, "retry_after", None) or 0.0
        self._not_before = time.monotonic() + max(
            retry_after, min(self.context.poll_interval_seconds, MAX_BACKOFF_SECONDS)
        )
        raise TransientError(
            f"Source {self.source_id}: {exc} (after {self.retry_count} retries)."
        ) from None

    def commit(self, fetch: Fetch, records_read: dict[str, int]) -> None:
        seq = fetch.ends.get(POSITION_KEY)
        if seq is None:
            return
        position = self._stats.pending.pop(seq, None)
        if position is not None:
            # The position first: a crash between the two writes loses one count of records read,
            # never a page (the other order would count a re-read page twice).
            self.state.set_source_state(self.source_id, STATE_KEY, position.dump())
            self._committed = position.copy()
        self.state.commit_offset(
            self.source_id, POSITION_KEY, seq, records_read.get(POSITION_KEY, 0)
        )
        for done in [k for k in self._stats.pending if k < seq]:
            del self._stats.pending[done]

    def rewind(self) -> None:
        self._cursor = self._committed.copy()
        self._stats.pending.clear()
        self._next_poll = 0.0

    def refresh_credentials(self) -> None:
        self._auth.forget()

    def rotate_credentials(self) -> dict[str, Any]:
        """Resolve the auth secrets again now; an ``oauth2`` source fetches a new token."""
        changed = self._auth.renew()
        result: dict[str, Any] = {"changed": changed}
        if self.connection.auth_type == "oauth2":
            result["token_refreshed"] = True
            result["token_expires_at"] = _iso(self._auth.token_expires_at)
        return result

    def waiting_to_retry(self) -> bool:
        return time.monotonic() < self._not_before

    def test(self) -> dict[str, Any]:
        url, params, _ = self._page_request(_Position(since=self._committed.watermark))
        started = time.perf_counter()
        try:
            response = self._request(url, params)
        except TransientError as exc:
            return {"ok": False, "endpoint": self.connection.endpoint, "error": str(exc)}
        result: dict[str, Any] = {
            "ok": True,
            "endpoint": self.connection.endpoint,
            "status_code": response.status_code,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        try:
            result["records"] = len(self._records(_decode(response.content)))
        except (msgspec.DecodeError, UnicodeDecodeError):
            result["records"] = None
            result["warning"] = "The response is not JSON."
        if self._auth.token_expires_at is not None:
            result["token_expires_at"] = _iso(self._auth.token_expires_at)
        return result

    def info(self) -> dict[str, Any]:
        s = self._stats
        return {
            "requests": s.requests,
            "errors": s.errors,
            "retries": s.retries,
            "token_refreshes": s.token_refreshes,
            "last_status_code": s.last_status_code,
            "last_request_error": s.last_error,
            "token_expires_at": _iso(self._auth.token_expires_at),
            "watermark": self._committed.watermark,
            "poll_in_progress": self._cursor.in_poll,
        }

    def open_connections(self) -> int:
        return 1

    def close(self) -> None:
        self._client.close()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
