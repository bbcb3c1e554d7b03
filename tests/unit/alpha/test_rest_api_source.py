"""The ``rest_api`` source against a real HTTP server on 127.0.0.1 (``http.server`` in a thread).

Auth (none, api_key, basic, bearer, OAuth2 client credentials with token cache, refresh before
expiry and on 401), pagination (cursor, page, Link header), the incremental watermark saved only
on commit, retries with backoff, 429 + Retry-After, timeouts, and the polling interval.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import ValidationError
from tests.unit.alpha.fake_api import Call, FakeApi, api, ok

from dps.alpha.sources.base import Fetch, SourceContext
from dps.alpha.sources.rest_api import STATE_KEY, RestApiConnection, RestApiSource
from dps.core.errors import TransientError
from dps.state import StateStore, open_state

__all__ = ["api"]  # the fixture

SOURCE_ID = "api"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = open_state("sqlite", {}, tmp_path / "data")
    yield store
    store.close()


def make(
    state: StateStore,
    connection: dict[str, Any],
    *,
    record_path: str | None = "$.data",
    interval: float = 60.0,
    batch_size: int = 2,
) -> RestApiSource:
    context = SourceContext(
        poll_interval_seconds=interval, batch_size=batch_size, record_path=record_path
    )
    return RestApiSource(
        SOURCE_ID, RestApiConnection.model_validate(connection), state, context=context
    )


def commit(source: RestApiSource, fetch: Fetch) -> None:
    source.commit(fetch, {"rest_api": len(fetch.items)})


def payload(fetch: Fetch) -> Any:
    assert len(fetch.items) == 1
    return json.loads(fetch.items[0].data)


def wait_fetch(source: RestApiSource, timeout: float = 5.0) -> Fetch:
    """Fetch until something comes back (a retry waits out its backoff with empty fetches)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fetch = source.fetch(100)
        if fetch:
            return fetch
        time.sleep(0.01)
    raise AssertionError("Nothing fetched in time.")


# -- polling and pagination ------------------------------------------------------------------


def test_one_poll_then_waits_for_the_interval(api: FakeApi, state: StateStore) -> None:
    api.on("/data", lambda c: ok({"data": [{"id": 1}, {"id": 2}]}))
    source = make(state, {"endpoint": f"{api.url}/data"}, interval=0.3)

    fetch = source.fetch(100)
    assert [r["id"] for r in payload(fetch)["data"]] == [1, 2]
    commit(source, fetch)
    assert not source.fetch(100)  # not due yet
    assert len(api.calls) == 1
    time.sleep(0.35)
    assert source.fetch(100)
    assert len(api.calls) == 2
    assert state.accounting()["ingested_by_source"][SOURCE_ID] == 1  # one item (a page) counted


def test_cursor_pagination_follows_the_cursor_and_resumes_after_a_restart(
    api: FakeApi, state: StateStore
) -> None:
    pages = {
        "": {"data": [{"id": 1}, {"id": 2}], "meta": {"next": "c2"}},
        "c2": {"data": [{"id": 3}, {"id": 4}], "meta": {"next": "c3"}},
        "c3": {"data": [{"id": 5}], "meta": {"next": None}},
    }
    api.on("/data", lambda c: ok(pages[c.query.get("cursor", "")]))
    conn = {
        "endpoint": f"{api.url}/data",
        "pagination": {"type": "cursor", "cursor_path": "meta.next", "size_param": "limit"},
    }
    source = make(state, conn)
    first = source.fetch(100)
    commit(source, first)
    second = source.fetch(100)  # fetched, never committed: the process dies here
    assert [r["id"] for r in payload(second)["data"]] == [3, 4]
    source.close()

    again = make(state, conn)
    replay = again.fetch(100)
    assert replay.items[0].origin == second.items[0].origin  # same origin: a replay
    assert [r["id"] for r in payload(replay)["data"]] == [3, 4]
    commit(again, replay)
    last = again.fetch(100)
    assert [r["id"] for r in payload(last)["data"]] == [5]
    commit(again, last)
    assert not again.fetch(100)  # the poll is over; the next one is an interval away
    assert [c.query.get("cursor") for c in api.calls] == [None, "c2", "c2", "c3"]
    assert {c.query["limit"] for c in api.calls} == {"2"}


def test_page_pagination_stops_at_a_short_page(api: FakeApi, state: StateStore) -> None:
    data = [{"id": i} for i in range(5)]

    def page(c: Call) -> tuple[int, dict[str, str], bytes]:
        n, size = int(c.query["page"]), int(c.query["per_page"])
        return ok({"data": data[(n - 1) * size : n * size]})

    api.on("/data", page)
    source = make(
        state,
        {
            "endpoint": f"{api.url}/data",
            "pagination": {"type": "page", "page_param": "page", "size_param": "per_page"},
        },
    )
    got = []
    for _ in range(3):
        fetch = source.fetch(100)
        got += [r["id"] for r in payload(fetch)["data"]]
        commit(source, fetch)
    assert got == [0, 1, 2, 3, 4]
    assert not source.fetch(100)
    assert [c.query["page"] for c in api.calls] == ["1", "2", "3"]


def test_link_header_pagination(api: FakeApi, state: StateStore) -> None:
    api.on("/data", lambda c: ok([{"id": 1}], {"Link": '</data2?x=1>; rel="next"'}))
    api.on("/data2", lambda c: ok([{"id": 2}]))
    source = make(
        state, {"endpoint": f"{api.url}/data", "pagination": {"type": "link"}}, record_path=None
    )

    first = source.fetch(100)
    commit(source, first)
    second = source.fetch(100)
    commit(source, second)
    assert payload(first) == [{"id": 1}] and payload(second) == [{"id": 2}]
    assert api.calls[1].path == "/data2" and api.calls[1].query == {"x": "1"}
    assert not source.fetch(100)


def test_watermark_is_saved_only_on_commit_and_sent_by_the_next_poll(
    api: FakeApi, state: StateStore
) -> None:
    rows = [
        {"id": 1, "updated_at": "2024-01-01T00:00:00Z"},
        {"id": 2, "updated_at": "2024-01-03T00:00:00Z"},
    ]
    api.on(
        "/data",
        lambda c: ok({"data": [r for r in rows if r["updated_at"] > c.query.get("since", "")]}),
    )
    conn = {
        "endpoint": f"{api.url}/data",
        "incremental": {"field": "updated_at", "param": "since", "initial_value": "2023-12-31"},
    }
    source = make(state, conn, interval=0.05)
    fetch = source.fetch(100)
    assert api.calls[0].query["since"] == "2023-12-31"
    assert state.get_source_state(SOURCE_ID, STATE_KEY) is None  # not durable yet: nothing saved
    source.close()

    # Restarted before the commit: the same request again.
    source = make(state, conn, interval=0.05)
    fetch = source.fetch(100)
    assert api.calls[1].query["since"] == "2023-12-31"
    commit(source, fetch)
    saved = json.loads(state.get_source_state(SOURCE_ID, STATE_KEY) or "{}")
    assert saved["watermark"] == "2024-01-03T00:00:00Z"
    time.sleep(0.06)
    empty_page = wait_fetch(source)
    assert api.calls[2].query["since"] == "2024-01-03T00:00:00Z"
    assert empty_page.items == []  # no records: nothing for the parser, but the poll commits
    assert source.info()["watermark"] == "2024-01-03T00:00:00Z"


# -- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth_type", "auth_config", "env", "expected"),
    [
        (
            "api_key",
            {"api_key_ref": "env:T_KEY", "header": "X-Key"},
            {"T_KEY": "k1"},
            ("x-key", "k1"),
        ),
        ("bearer", {"token_ref": "env:T_TOKEN"}, {"T_TOKEN": "t1"}, ("authorization", "Bearer t1")),
        (
            "basic",
            {"username_ref": "env:T_USER", "password_ref": "env:T_PASS"},
            {"T_USER": "u", "T_PASS": "p"},
            ("authorization", "Basic " + base64.b64encode(b"u:p").decode()),
        ),
    ],
)
def test_static_credentials_are_sent(
    api: FakeApi,
    state: StateStore,
    monkeypatch: pytest.MonkeyPatch,
    auth_type: str,
    auth_config: dict[str, str],
    env: dict[str, str],
    expected: tuple[str, str],
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    api.on("/data", lambda c: ok({"data": []}))
    source = make(
        state, {"endpoint": f"{api.url}/data", "auth_type": auth_type, "auth_config": auth_config}
    )
    assert source.fetch(100)
    header, value = expected
    assert api.calls[0].headers[header] == value


def test_a_missing_secret_is_an_error_naming_it(api: FakeApi, state: StateStore) -> None:
    api.on("/data", lambda c: ok({"data": []}))
    source = make(
        state,
        {
            "endpoint": f"{api.url}/data",
            "auth_type": "bearer",
            "auth_config": {"token_ref": "env:DPS_TEST_NOT_SET_ANYWHERE"},
            "retry_count": 0,
        },
    )
    with pytest.raises(TransientError, match="DPS_TEST_NOT_SET_ANYWHERE"):
        source.fetch(100)
    assert api.calls == []


@pytest.fixture
def oauth(api: FakeApi, tmp_path: Path) -> dict[str, Any]:
    """An OAuth2 token endpoint issuing tokens t1, t2, ... with a scripted lifetime."""
    issued: list[str] = []
    lifetime = {"seconds": 3600}

    def token(c: Call) -> tuple[int, dict[str, str], bytes]:
        form = parse_qs(c.body)
        if form.get("client_secret") != ["s3cret"] or form.get("grant_type") != [
            "client_credentials"
        ]:
            return 401, {}, b'{"error": "invalid_client"}'
        issued.append(f"t{len(issued) + 1}")
        return ok({"access_token": issued[-1], "expires_in": lifetime["seconds"]})

    valid: set[str] = set()

    def data(c: Call) -> tuple[int, dict[str, str], bytes]:
        if c.headers.get("authorization", "").removeprefix("Bearer ") not in valid | set(
            issued[-1:]
        ):
            return 401, {}, b"expired"
        return ok({"data": [{"id": 1}]})

    api.on("/token", token)
    api.on("/data", data)
    secret = tmp_path / "client_secret"
    secret.write_text("s3cret\n")
    conn = {
        "endpoint": f"{api.url}/data",
        "auth_type": "oauth2",
        "auth_config": {
            "token_url": f"{api.url}/token",
            "client_id_ref": "env:T_CLIENT_ID",
            "client_secret_ref": f"file:{secret}",
            "token_refresh_margin_seconds": 1,
        },
        "retry_count": 0,
    }
    return {"issued": issued, "lifetime": lifetime, "conn": conn, "secret": secret}


def test_oauth2_token_is_cached_and_refreshed_before_expiry(
    api: FakeApi, state: StateStore, oauth: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_CLIENT_ID", "client")
    oauth["lifetime"]["seconds"] = 1.5  # margin min(1, 0.75) = 0.75 s
    source = make(state, oauth["conn"], interval=0.01)
    for _ in range(3):
        commit(source, wait_fetch(source))
    assert oauth["issued"] == ["t1"]  # cached
    assert source.info()["token_expires_at"] is not None
    time.sleep(0.8)
    commit(source, wait_fetch(source))
    assert oauth["issued"] == ["t1", "t2"]  # refreshed before it expired: no 401 seen
    assert [c.headers["authorization"] for c in api.calls_to("/data")][-1] == "Bearer t2"
    assert all(c.body.count("client_id=client") for c in api.calls_to("/token"))


def test_oauth2_401_fetches_a_new_token_and_repeats_once(
    api: FakeApi, state: StateStore, oauth: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_CLIENT_ID", "client")
    source = make(state, oauth["conn"], interval=0.01)
    commit(source, wait_fetch(source))
    # The server revokes t1 (a token expiring mid-run): the next request gets 401 once.
    oauth["issued"].append("revoked-marker")
    commit(source, wait_fetch(source))
    statuses = [c.headers["authorization"] for c in api.calls_to("/data")]
    assert statuses == ["Bearer t1", "Bearer t1", "Bearer t3"]
    assert source.info()["errors"] == 0


def test_oauth2_rotated_secret_is_used_after_refresh_credentials(
    api: FakeApi, state: StateStore, oauth: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_CLIENT_ID", "client")
    oauth["secret"].write_text("wrong")
    source = make(state, oauth["conn"])
    with pytest.raises(TransientError, match=r"token endpoint .* answered 401"):
        source.fetch(100)
    oauth["secret"].write_text("s3cret")
    source.refresh_credentials()
    source._not_before = 0.0  # the test does not wait out the source's retry pause
    assert source.fetch(100)


# -- failures ----------------------------------------------------------------------------------


def test_5xx_is_retried_with_backoff_then_succeeds(api: FakeApi, state: StateStore) -> None:
    answers = iter([(500, {}, b"boom"), (502, {}, b"boom")])
    api.on("/data", lambda c: next(answers, ok({"data": [{"id": 1}]})))
    source = make(state, {"endpoint": f"{api.url}/data", "retry_count": 3, "retry_backoff_ms": 50})

    started = time.monotonic()
    assert not source.fetch(100)  # failed; waits 50 ms
    assert source.waiting_to_retry()
    assert not source.fetch(100)  # still waiting: no request made
    assert len(api.calls) == 1
    fetch = wait_fetch(source)
    assert payload(fetch)["data"] == [{"id": 1}]
    assert len(api.calls) == 3
    assert time.monotonic() - started >= 0.15  # 50 ms then 100 ms
    assert source.info()["retries"] == 2


def test_429_retry_after_is_honoured(api: FakeApi, state: StateStore) -> None:
    answers = iter([(429, {"Retry-After": "1"}, b"slow down")])
    api.on("/data", lambda c: next(answers, ok({"data": []})))
    source = make(state, {"endpoint": f"{api.url}/data", "retry_backoff_ms": 1})

    assert not source.fetch(100)
    time.sleep(0.5)
    assert not source.fetch(100)  # backoff alone would have retried by now
    assert len(api.calls) == 1
    wait_fetch(source, timeout=2)
    assert len(api.calls) == 2


def test_retries_used_up_raise_and_the_next_attempt_waits(api: FakeApi, state: StateStore) -> None:
    api.on("/data", lambda c: (503, {}, b"down"))
    source = make(state, {"endpoint": f"{api.url}/data", "retry_count": 1, "retry_backoff_ms": 10})
    assert not source.fetch(100)
    time.sleep(0.02)
    with pytest.raises(TransientError, match=r"answered 503\. \(after 1 retries\)"):
        source.fetch(100)
    assert source.waiting_to_retry()


def test_a_hanging_server_times_out(api: FakeApi, state: StateStore) -> None:
    def hang(c: Call) -> tuple[int, dict[str, str], bytes]:
        time.sleep(1.0)
        return ok({"data": []})

    api.on("/data", hang)
    source = make(state, {"endpoint": f"{api.url}/data", "timeout_ms": 100, "retry_count": 0})
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not answer within 100 ms"):
        source.fetch(100)
    assert time.monotonic() - started < 0.8


def test_4xx_is_an_error_saying_what_to_check(api: FakeApi, state: StateStore) -> None:
    source = make(state, {"endpoint": f"{api.url}/missing", "retry_count": 0})
    with pytest.raises(TransientError, match=r"answered 404.*check the endpoint"):
        source.fetch(100)


def test_garbage_body_is_handed_to_the_parser(api: FakeApi, state: StateStore) -> None:
    api.on("/data", lambda c: (200, {}, b"\x00\xff{not json"))
    source = make(state, {"endpoint": f"{api.url}/data"})
    fetch = source.fetch(100)
    assert fetch.items[0].data == b"\x00\xff{not json"


def test_test_reports_status_latency_and_records(api: FakeApi, state: StateStore) -> None:
    api.on("/data", lambda c: ok({"data": [{"id": 1}, {"id": 2}]}))
    result = make(state, {"endpoint": f"{api.url}/data"}).test()
    assert result["ok"] is True and result["status_code"] == 200 and result["records"] == 2
    bad = make(state, {"endpoint": f"{api.url}/nope", "retry_count": 0}).test()
    assert bad["ok"] is False and "404" in bad["error"]


# -- configuration -----------------------------------------------------------------------------

A1_CONNECTION = {
    "endpoint": "https://api.example.com/data",
    "auth_type": "oauth2",
    "auth_config": {
        "token_url": "https://api.example.com/oauth/token",
        "client_id_ref": "vault:secret/pipeline/new_source/client_id",
        "client_secret_ref": "vault:secret/pipeline/new_source/client_secret",
    },
    "timeout_ms": 30000,
    "retry_count": 3,
}


def test_rest_api_accepts_the_runbook_a1_connection() -> None:
    connection = RestApiConnection.model_validate(A1_CONNECTION)
    assert connection.auth_type == "oauth2"
    assert connection.auth_config.client_secret_ref == (
        "vault:secret/pipeline/new_source/client_secret"
    )
    assert connection.pagination.type == "none"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"auth_type": "kerberos"}, "auth_type"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"retry_count": -1}, "retry_count"),
        ({"auth_config": {"client_secret_ref": "hunter2"}}, "client_secret_ref"),
        ({"endpont": "https://x"}, "endpont"),
        ({"pagination": {"type": "offset"}}, "pagination.type"),
        ({"incremental": {"field": "x"}}, "incremental.param"),
    ],
)
def test_rest_api_refuses_bad_settings(change: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        RestApiConnection.model_validate(A1_CONNECTION | change)
