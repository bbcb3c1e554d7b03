"""TLS of the admin APIs: what the servers present and what every caller verifies.

``admin.tls`` in pipeline.yaml turns every module's admin API into HTTPS. Everything that calls
an admin API — the supervisor's readiness probe, ``dps run``'s progress poll, the control
service's calls to the modules and the CLI — builds its URLs with :func:`base_url` and its
certificate check with :func:`client_verify`, so that one setting switches the whole system and
nothing falls back to plain HTTP or to skipping verification.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

from dps.config import PipelineConfig

__all__ = [
    "TlsSetupError",
    "base_url",
    "check_server_files",
    "client_verify",
    "connect_host",
    "scheme",
    "server_files",
    "verify_context",
]

#: Bind addresses that mean "every interface": callers connect to loopback instead.
_ANY: Final = ("0.0.0.0", "::", "")


class TlsSetupError(RuntimeError):
    """The configured certificate, key or CA file cannot be loaded; the message says which."""


def server_files(config: PipelineConfig) -> tuple[Path, Path] | None:
    """``(cert_file, key_file)`` as absolute paths when ``admin.tls`` is set, else None."""
    tls = config.pipeline.admin.tls
    if tls is None:
        return None
    cert, key = tls.path("cert_file", config.root), tls.path("key_file", config.root)
    assert cert is not None and key is not None
    return cert, key


def scheme(config: PipelineConfig) -> str:
    """``https`` when ``admin.tls`` is set, else ``http``."""
    return "https" if config.pipeline.admin.tls is not None else "http"


def connect_host(bind: str) -> str:
    """The address a local caller connects to for a server bound to ``bind``."""
    return "127.0.0.1" if bind in _ANY else bind


def base_url(config: PipelineConfig, host: str, port: int) -> str:
    """``http(s)://host:port`` of an admin API (IPv6 literals bracketed)."""
    host = connect_host(host)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme(config)}://{shown}:{port}"


def client_verify(config: PipelineConfig) -> ssl.SSLContext | bool:
    """What httpx's ``verify`` gets for calls to the admin APIs.

    Without ``admin.tls``: ``True`` (the default; plain HTTP needs nothing). With it: a context
    that trusts ``ca_file``, or the server certificate itself when no CA is given (a
    self-signed certificate), with host name checking on.
    """
    tls = config.pipeline.admin.tls
    if tls is None:
        return True
    ca = tls.path("ca_file", config.root) or tls.path("cert_file", config.root)
    assert ca is not None  # cert_file is required
    return verify_context(ca)


def verify_context(ca_file: Path | str) -> ssl.SSLContext:
    """An SSL context trusting exactly ``ca_file``; a clear error when it cannot be read."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"The admin API CA file {ca_file} cannot be loaded: {exc}. Check admin.tls "
            "(ca_file, or cert_file when no ca_file is set) in pipeline.yaml."
        ) from exc


def check_server_files(cert: Path | str, key: Path | str) -> None:
    """Raise :class:`TlsSetupError` unless the certificate and key load together."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"The admin API certificate {cert} and key {key} cannot be loaded: {exc}. Check "
            "admin.tls.cert_file and admin.tls.key_file in pipeline.yaml."
        ) from exc
