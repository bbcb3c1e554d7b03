"""weekly_cert_check: days to expiry of every TLS certificate the pipeline serves or talks to.

What is checked:

- the admin API certificate (``admin.tls.cert_file``), read from the file, and the certificate
  each module's https admin API actually presents (a renewed file is only served after a
  restart, so both are reported);
- every ``https://`` endpoint in the configuration of an enabled alpha source (``rest_api``
  URLs, OAuth2 token endpoints), beta enrichment source (``http``) and gamma destination
  (``http``), by connecting and reading the peer certificate.

The peer certificate is read without verifying it, on purpose: an expired or self-signed
certificate must be reported with its date, not hidden behind a handshake error. Whether the
endpoint is trusted is the calling plugin's concern (it verifies as configured).

Grades: ``OK``; ``WARN`` under :data:`WARN_DAYS` days; ``FAIL`` under :data:`FAIL_DAYS` days,
expired, unreadable or unreachable. The run fails when any certificate is ``FAIL``.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from dps.control.jobs.base import JobContext, JobResult

#: Fewer days left than this: a warning.
WARN_DAYS: Final = 30
#: Fewer days left than this (or expired, unreachable): the run fails.
FAIL_DAYS: Final = 7
#: Seconds to connect and finish a handshake with one endpoint.
CONNECT_TIMEOUT: Final = 10.0


def _grade(days_left: float) -> str:
    if days_left < FAIL_DAYS:
        return "FAIL"
    if days_left < WARN_DAYS:
        return "WARN"
    return "OK"


def _describe(der_or_pem: bytes, *, pem: bool) -> dict[str, Any]:
    from cryptography import x509

    cert = (
        x509.load_pem_x509_certificate(der_or_pem)
        if pem
        else x509.load_der_x509_certificate(der_or_pem)
    )
    not_after = cert.not_valid_after_utc
    days_left = (not_after - datetime.now(UTC)).total_seconds() / 86400
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": not_after.isoformat(),
        "days_left": round(days_left, 2),
        "status": _grade(days_left),
    }


def certificate_file(path: Path) -> dict[str, Any]:
    """Expiry of the first certificate in a PEM file (``status`` FAIL when unreadable)."""
    try:
        return _describe(path.read_bytes(), pem=True)
    except (OSError, ValueError) as exc:
        return {"status": "FAIL", "error": f"{path} cannot be read as a PEM certificate: {exc}"}


def peer_certificate(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
    """Expiry of the certificate ``host:port`` presents (``status`` FAIL when unreachable)."""
    context = ssl.create_default_context()
    # Read, not judged: an expired or self-signed certificate is what we want to report.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return {"status": "FAIL", "error": f"{host}:{port} unreachable over TLS: {exc}"}
    if not der:
        return {"status": "FAIL", "error": f"{host}:{port} presented no certificate"}
    try:
        return _describe(der, pem=False)
    except ValueError as exc:
        return {"status": "FAIL", "error": f"{host}:{port} sent an unreadable certificate: {exc}"}


def _https_urls(value: Any, where: str) -> list[tuple[str, str]]:
    """Every ``https://`` string inside a dumped configuration, with its key path."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _https_urls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _https_urls(item, f"{where}[{i}]")
    elif isinstance(value, str) and value.lower().startswith("https://"):
        found.append((where, value))
    return found


def configured_endpoints(ctx: JobContext) -> dict[tuple[str, int], list[str]]:
    """``{(host, port): [where it is configured, ...]}`` for every https endpoint."""
    config = ctx.config
    groups: list[tuple[str, dict[str, Any]]] = [
        ("alpha/sources", dict(config.alpha.sources)),
        ("beta/enrichment", dict(config.beta.enrichment)),
        ("gamma/destinations", dict(config.gamma.destinations)),
    ]
    endpoints: dict[tuple[str, int], list[str]] = {}
    for folder, items in groups:
        for name, item in sorted(items.items()):
            if getattr(item, "enabled", True) is False:
                ctx.log("Skipped: disabled.", item=f"{folder}/{name}")
                continue
            dumped = item.model_dump(mode="json", serialize_as_any=True)
            for where, url in _https_urls(dumped, f"{folder}/{name}"):
                parts = urlsplit(url)
                if not parts.hostname:
                    continue
                key = (parts.hostname, parts.port or 443)
                endpoints.setdefault(key, []).append(where)
    return endpoints


def weekly_cert_check(ctx: JobContext) -> JobResult:
    """Report the days to expiry of each certificate (see the module docstring)."""
    checked: list[dict[str, Any]] = []
    tls = ctx.config.pipeline.admin.tls
    if tls is not None:
        cert_file = tls.path("cert_file", ctx.config.root)
        assert cert_file is not None
        checked.append(
            {"kind": "admin_cert_file", "target": str(cert_file)} | certificate_file(cert_file)
        )
        for module, url in sorted(ctx.modules.urls.items()):
            parts = urlsplit(url)
            if parts.scheme != "https" or not parts.hostname:
                continue
            checked.append(
                {"kind": "admin_api", "target": f"{module} {url}"}
                | peer_certificate(parts.hostname, parts.port or 443)
            )
    else:
        ctx.log("admin.tls is not set: the admin APIs serve plain HTTP, no certificate to check.")
    for (host, port), where in sorted(configured_endpoints(ctx).items()):
        checked.append(
            {"kind": "endpoint", "target": f"{host}:{port}", "configured_in": where}
            | peer_certificate(host, port)
        )
    for item in checked:
        ctx.log(
            "Certificate checked.",
            target=item["target"],
            status=item["status"],
            days_left=item.get("days_left"),
            not_after=item.get("not_after"),
            error=item.get("error"),
        )
    warn = [c["target"] for c in checked if c["status"] == "WARN"]
    failed = [c["target"] for c in checked if c["status"] == "FAIL"]
    outputs = ctx.write_report(
        "Certificate expiry",
        {
            "thresholds": {"warn_under_days": WARN_DAYS, "fail_under_days": FAIL_DAYS},
            "certificates": checked,
            "warn": warn,
            "failed": failed,
        },
    )
    if not checked:
        return JobResult(0, "No TLS certificate to check (no admin.tls, no https endpoint).")
    message = f"{len(checked)} certificates checked"
    if failed:
        message += (
            f"; failing (under {FAIL_DAYS} days, expired or unreachable): {', '.join(failed)}"
        )
    if warn:
        message += f"; expiring within {WARN_DAYS} days: {', '.join(warn)}"
    return JobResult(len(checked), message + ".", ok=not failed, outputs=outputs)
