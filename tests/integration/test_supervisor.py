"""The supervisor with real child processes: order, readiness, restarts, stop order, no orphans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dps.runtime.supervisor import ChildSpec, Supervisor, SupervisorError, describe_exit

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups and PDEATHSIG")

#: A child: records its life in an events file, optionally serves a readiness URL.
CHILD = textwrap.dedent(
    """
    import http.server, json, os, signal, sys, threading, time

    name, events, port, ready_delay, mode = sys.argv[1:6]

    def event(kind):
        with open(events, "a") as f:
            f.write(json.dumps({"event": kind, "name": name, "pid": os.getpid()}) + "\\n")

    def on_term(signum, frame):
        event("term")
        if mode != "ignore-term":
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    event("start")
    if mode == "exit3":
        sys.exit(3)
    time.sleep(float(ready_delay))
    if int(port):
        class Ok(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", int(port)), Ok)
        event("ready")
        threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        time.sleep(0.05)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def restarted(supervisor: Supervisor, count: int) -> bool:
    return supervisor.restarts["beta"] == count


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class Kit:
    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "child.py"
        self.script.write_text(CHILD)
        self.events_file = tmp_path / "events.ndjson"
        self.events_file.touch()

    def spec(
        self, name: str, *, ready: bool = False, delay: float = 0.0, mode: str = "normal"
    ) -> ChildSpec:
        port = free_port() if ready else 0
        argv = [sys.executable, str(self.script), name, str(self.events_file), str(port)]
        return ChildSpec(
            name,
            [*argv, str(delay), mode],
            env={"DPS_TEST_CHILD": name},
            ready_url=f"http://127.0.0.1:{port}/admin/health" if ready else None,
            ready_timeout=10.0,
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.events_file.read_text().splitlines()]

    def sequence(self, *kinds: str) -> list[tuple[str, str]]:
        return [(e["event"], e["name"]) for e in self.events() if e["event"] in kinds]


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return Kit(tmp_path)


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for supervisor in started:
        supervisor.stop()


def test_start_order_readiness_and_reverse_stop(kit: Kit, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(
        [
            kit.spec("gamma", ready=True, delay=0.5),
            kit.spec("beta", ready=True),
            kit.spec("alpha"),
        ],
        grace_period=5,
    )
    supervisors.append(supervisor)
    supervisor.start()
    wait_for(lambda: len(kit.sequence("start")) == 3)  # alpha has no readiness gate
    assert kit.sequence("start", "ready") == [
        ("start", "gamma"),
        ("ready", "gamma"),
        ("start", "beta"),
        ("ready", "beta"),
        ("start", "alpha"),
    ]
    assert all(entry["running"] for entry in supervisor.status())
    pids = [supervisor.pid(name) for name in ("gamma", "beta", "alpha")]
    supervisor.stop()
    assert kit.sequence("term") == [("term", "alpha"), ("term", "beta"), ("term", "gamma")]
    assert not any(alive(pid) for pid in pids if pid is not None)
    assert supervisor.restarts == {"gamma": 0, "beta": 0, "alpha": 0}
    assert [entry["last_exit"] for entry in supervisor.status()] == ["exit code 0"] * 3


def test_restart_after_sigkill_with_doubling_backoff(
    kit: Kit, supervisors: list[Supervisor]
) -> None:
    supervisor = Supervisor(
        [kit.spec("beta")], backoff_initial=0.5, backoff_max=5, poll_interval=0.02
    )
    supervisors.append(supervisor)
    supervisor.start()
    gaps = []
    for expected_restarts in (1, 2):
        pid = supervisor.pid("beta")
        assert pid is not None
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(partial(restarted, supervisor, expected_restarts))
        gaps.append(supervisor.start_times("beta")[-1] - killed_at)
        assert supervisor.pid("beta") not in (None, pid)
        assert supervisor.status()[0]["last_exit"] == "signal SIGKILL"
    assert 0.5 <= gaps[0] < 1.0
    assert 1.0 <= gaps[1] < 2.0


def test_backoff_starts_over_after_a_stable_run(kit: Kit, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(
        [kit.spec("beta")],
        backoff_initial=0.5,
        stable_after=0.8,
        poll_interval=0.02,
    )
    supervisors.append(supervisor)
    supervisor.start()
    for expected_restarts in (1, 2):
        pid = supervisor.pid("beta")
        assert pid is not None
        if expected_restarts == 2:
            time.sleep(1.0)  # longer than stable_after
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(partial(restarted, supervisor, expected_restarts))
        gap = supervisor.start_times("beta")[-1] - killed_at
        assert 0.5 <= gap < 1.0, "the second crash after a stable run waits 0.5 s again"


def test_sigkill_after_the_grace_period(kit: Kit, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor([kit.spec("gamma", mode="ignore-term")], grace_period=0.5)
    supervisors.append(supervisor)
    supervisor.start()
    wait_for(lambda: kit.sequence("start") == [("start", "gamma")])  # its SIGTERM handler is set
    pid = supervisor.pid("gamma")
    assert pid is not None
    began = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - began >= 0.5
    assert not alive(pid)
    assert kit.sequence("term") == [("term", "gamma")]
    assert supervisor.status()[0]["last_exit"] == "signal SIGKILL"


def test_child_that_exits_before_ready_fails_the_start(
    kit: Kit, supervisors: list[Supervisor]
) -> None:
    supervisor = Supervisor(
        [
            kit.spec("gamma", ready=True),
            kit.spec("beta", ready=True, mode="exit3"),
            kit.spec("alpha"),
        ],
        grace_period=5,
    )
    supervisors.append(supervisor)
    with pytest.raises(SupervisorError, match="'beta' exited with exit code 3 before it was ready"):
        supervisor.start()
    assert kit.sequence("start", "term") == [
        ("start", "gamma"),
        ("start", "beta"),
        ("term", "gamma"),
    ]


def test_child_not_ready_in_time_fails_the_start(kit: Kit, supervisors: list[Supervisor]) -> None:
    spec = kit.spec("gamma", ready=True, delay=30)
    spec.ready_timeout = 0.5
    supervisor = Supervisor([spec], grace_period=5)
    supervisors.append(supervisor)
    with pytest.raises(SupervisorError, match=r"'gamma' was not ready within 0\.5 s"):
        supervisor.start()
    assert supervisor.pid("gamma") is None


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(-15) == "signal SIGTERM"


def test_duplicate_names_are_refused(kit: Kit) -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([kit.spec("a"), kit.spec("a")])


RUNNER = textwrap.dedent(
    """
    import json, sys
    from dps.core.logging import configure_logging
    from dps.runtime.supervisor import ChildSpec, Supervisor

    configure_logging("supervisor")
    specs = [ChildSpec(**spec) for spec in json.loads(sys.argv[1])]
    sys.exit(Supervisor(specs, grace_period=5).run_forever())
    """
)


def run_supervisor_process(kit: Kit) -> subprocess.Popen[bytes]:
    specs = [kit.spec("gamma", ready=True), kit.spec("beta"), kit.spec("alpha")]
    payload = json.dumps(
        [{"name": s.name, "argv": s.argv, "env": s.env, "ready_url": s.ready_url} for s in specs]
    )
    process = subprocess.Popen([sys.executable, "-c", RUNNER, payload], stderr=subprocess.PIPE)
    wait_for(lambda: len(kit.sequence("start")) == 3)
    return process


def child_pids(kit: Kit) -> list[int]:
    return [e["pid"] for e in kit.events() if e["event"] == "start"]


def test_sigterm_to_the_supervisor_stops_children_in_reverse(kit: Kit) -> None:
    process = run_supervisor_process(kit)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0
    assert kit.sequence("term") == [("term", "alpha"), ("term", "beta"), ("term", "gamma")]
    assert not any(alive(pid) for pid in child_pids(kit))
    log = [json.loads(line) for line in stderr.decode().splitlines()]
    assert {entry["module"] for entry in log} == {"supervisor"}
    messages = [entry["message"] for entry in log]
    assert "Stop requested." in messages
    assert "All children stopped." in messages


def test_sigkill_of_the_supervisor_leaves_no_orphans(kit: Kit) -> None:
    process = run_supervisor_process(kit)
    pids = child_pids(kit)
    assert all(alive(pid) for pid in pids)
    process.kill()
    process.communicate(timeout=10)
    wait_for(lambda: not any(alive(pid) for pid in pids))
    assert sorted(name for _, name in kit.sequence("term")) == ["alpha", "beta", "gamma"]
