"""The dlt peer of ``dps bench --compare``: its own virtualenv, created on demand, and one run.

dlt is not a dependency of dps and must not become one: its pins would then decide which
versions the pipeline is measured with. ``benchmarks/peers/requirements-dlt.txt`` is installed
into a virtualenv of its own in a cache directory (``$DPS_BENCH_CACHE``, else
``$XDG_CACHE_HOME/dps-bench``, else ``~/.cache/dps-bench``), which is reused for as long as the
requirements file (and the Python version) stay the same: a marker file holds their hash.

Installing needs the package index. When it cannot be reached, or the peer itself fails, the
benchmark goes on without it and says why (:class:`PeerUnavailable`): a missing comparison is
a note in the report, never a failed benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parents[3] / "benchmarks" / "peers"
REQUIREMENTS = PEERS / "requirements-dlt.txt"
SCRIPT = PEERS / "dlt_peer.py"
MARKER = ".dps-requirements.sha256"
#: Seconds the install may take before it counts as failed (a slow mirror, not a hung one).
INSTALL_TIMEOUT = 900.0


class PeerUnavailable(Exception):
    """The dlt peer could not be installed or did not finish; the message says why."""


def cache_dir() -> Path:
    explicit = os.environ.get("DPS_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dps-bench"


def requirements_hash() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path | None = None, *, progress: Callable[[str], None] | None = None) -> Path:
    """The dlt virtualenv's interpreter, installing it first when it is missing or stale.

    ``progress`` receives one line per step of the install (pip's own "Collecting ...",
    "Installing ..." lines). The install happens in a sibling directory that is renamed into
    place only when it succeeded, so an interrupted install is never mistaken for a finished one.
    """
    venv = venv or cache_dir() / "dlt-venv"
    wanted = requirements_hash()
    if _current(venv, wanted):
        return venv_python(venv)
    say = progress or (lambda _line: None)
    venv.parent.mkdir(parents=True, exist_ok=True)
    staging = venv.with_name(f"{venv.name}.installing-{uuid.uuid4().hex[:6]}")
    log_path = venv.with_name(f"{venv.name}.install.log")
    started = time.monotonic()
    try:
        say(f"Creating a virtualenv for the dlt peer in {venv} (once per requirements file)...")
        _run([sys.executable, "-m", "venv", str(staging)], log_path, say)
        say(f"Installing {_pins()} (pip output in {log_path})...")
        _run(
            [str(venv_python(staging)), "-m", "pip", "install", "--disable-pip-version-check",
             "--progress-bar", "off", "-r", str(REQUIREMENTS)],
            log_path, say, append=True,
        )  # fmt: skip
        (staging / MARKER).write_text(wanted + "\n")
        if _current(venv, wanted):  # another benchmark installed it meanwhile: use theirs
            shutil.rmtree(staging, ignore_errors=True)
            return venv_python(venv)
        if venv.exists():
            shutil.rmtree(venv)
        try:
            staging.rename(venv)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not _current(venv, wanted):
                raise PeerUnavailable(f"could not move the new virtualenv to {venv}") from None
        say(f"The dlt peer's virtualenv is ready ({time.monotonic() - started:.0f} s).")
    except PeerUnavailable:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # A venv's scripts name their interpreter by absolute path: the rename must not break
    # them, and it does not for ``python -m``, which is all the peer uses.
    return venv_python(venv)


def _current(venv: Path, wanted: str) -> bool:
    marker = venv / MARKER
    try:
        return venv_python(venv).exists() and marker.read_text().strip() == wanted
    except OSError:
        return False


def _pins() -> str:
    lines = (line.strip() for line in REQUIREMENTS.read_text().splitlines())
    return ", ".join(line for line in lines if line and not line.startswith("#"))


def _run(argv: list[str], log_path: Path, say: Callable[[str], None], append: bool = False) -> None:
    with log_path.open("a" if append else "w") as log:
        try:
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        except OSError as exc:
            raise PeerUnavailable(f"could not run {argv[0]}: {exc}") from None
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            text = line.strip()
            if text.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
                say(text[:120])
        try:
            code = process.wait(INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            raise PeerUnavailable(f"installing dlt took over {INSTALL_TIMEOUT:.0f} s") from None
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        raise PeerUnavailable(
            f"installing dlt failed (exit {code}: {tail[0][:200]}); the full log is {log_path}"
        )


def run_peer(
    python: Path, input_dir: Path, pg_dsn: str, work: Path, timeout: float = 3600.0
) -> dict[str, Any]:
    """Run ``benchmarks/peers/dlt_peer.py`` on ``input_dir`` in a schema of its own.

    Returns the peer's JSON (records, rows, review, seconds, records_per_second, dlt_version).
    The peer drops its schemas itself; they are dropped here again in case it died first.
    """
    schema = f"bench_dlt_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "RUNTIME__DLTHUB_TELEMETRY": "false"}
    try:
        done = subprocess.run(
            [str(python), str(SCRIPT), "--input", str(input_dir), "--dsn", pg_dsn,
             "--schema", schema, "--out", str(work / "dlt-review.jsonl"),
             "--customers", str(input_dir.parent / "customers.csv")],
            capture_output=True, text=True, check=False, timeout=timeout, env=env, cwd=work,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"the dlt peer did not finish within {timeout:.0f} s") from None
    finally:
        _drop_schemas(pg_dsn, (schema, f"{schema}_staging"))
    if done.returncode != 0:
        raise PeerUnavailable(f"the dlt peer failed: {done.stderr.strip()[-500:]}")
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise PeerUnavailable(f"the dlt peer printed no result: {done.stdout[-300:]}") from None
    return result


def _drop_schemas(pg_dsn: str, schemas: tuple[str, ...]) -> None:
    import psycopg

    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except psycopg.Error:
        pass  # the peer's own cleanup ran first; this one only catches a crashed peer
