"""Alpha's maintenance jobs: ``alpha_buffer_flush`` and ``alpha_credential_rotate``.

Both act through Alpha's admin API, between two of its worker's steps, and lose nothing: a flush
only makes held records durable sooner, a rotation only changes the credentials of the next
request.
"""

from __future__ import annotations

from typing import Any

from dps.control.jobs.base import JobContext, JobResult
from dps.control.jobs.modules import call_module


def _alpha(ctx: JobContext, method: str, path: str) -> Any:
    return call_module(ctx, "alpha", method, path)


def alpha_buffer_flush(ctx: JobContext) -> JobResult:
    """Make durable what alpha's sources hold (``POST /admin/buffer/flush``) and report the rest.

    What a source can hold between two steps is the batches pushed to an ``http_push`` endpoint
    whose senders wait for the answer; they stay held while the source or alpha is paused or the
    ingest buffer is full. The run fails only when held records could not be written.
    """
    result = _alpha(ctx, "POST", "/admin/buffer/flush")
    buffer = result["buffer"]
    for sid, entry in sorted(result["flushed"].items()):
        ctx.log(
            "Source flushed.",
            source=sid,
            held_before=entry["held_before"],
            records_written=entry["records_written"],
            held_after=entry["held_after"],
            kept=entry.get("kept"),
            error=entry.get("error"),
        )
    for sid, source in sorted(buffer["sources"].items()):
        if source["held_records"]:
            ctx.log(
                "Records still held.",
                source=sid,
                held_records=source["held_records"],
                oldest_age_seconds=source["oldest_age_seconds"],
                status=source["status"],
            )
    ctx.log(
        "Transform queue.",
        depth=buffer["transform_queue_depth"],
        capacity=buffer["buffer_capacity"],
        utilization=buffer["buffer_utilization"],
    )
    written = int(result["records_written"])
    message = f"{written} held records made durable; {result['held_after']} still held"
    errors = result.get("errors") or {}
    if errors:
        message += "; failed: " + ", ".join(f"{s} ({e})" for s, e in sorted(errors.items()))
    return JobResult(written, message + ".", ok=not errors)


def alpha_credential_rotate(ctx: JobContext) -> JobResult:
    """Resolve every alpha source's secret references again (``POST /admin/credentials/rotate``)
    and test each enabled source that has any (``POST /admin/sources/<id>/test``).

    A secret rotated behind an unchanged reference (a rewritten file, an updated Vault secret)
    is used from the next request on, without a restart; an ``oauth2`` source fetches a new token.
    The run fails when a reference does not resolve or a source's test fails with the new
    credentials, naming the sources (they keep the credentials they had).
    """
    result = _alpha(ctx, "POST", "/admin/credentials/rotate")
    failed: dict[str, str] = {}
    checked = 0
    for sid, entry in sorted(result["sources"].items()):
        if not entry["secret_refs"]:
            continue
        checked += 1
        ctx.log(
            "Credentials resolved again.",
            source=sid,
            enabled=entry["enabled"],
            refs=sorted(entry["secret_refs"].values()),
            changed=entry.get("changed"),
            token_expires_at=entry.get("token_expires_at"),
            ok=entry["ok"],
            error=entry.get("error"),
        )
        if not entry["ok"]:
            failed[sid] = str(entry.get("error"))
            continue
        if not entry["enabled"]:
            continue
        response = ctx.modules.request("alpha", "POST", f"/admin/sources/{sid}/test")
        test = response.json() if response.content else {}
        ok = response.status_code < 400 and bool(test.get("ok", False))
        ctx.log("Source tested.", source=sid, ok=ok, error=test.get("error"))
        if not ok:
            failed[sid] = str(test.get("error") or f"test answered {response.status_code}")
    message = f"{checked} sources with secret references resolved again"
    if failed:
        message += "; failing: " + ", ".join(f"{s} ({e})" for s, e in sorted(failed.items()))
    return JobResult(checked, message + ".", ok=not failed)
