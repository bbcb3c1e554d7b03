"""How the control service reaches the other modules: their admin APIs over HTTP, nothing else.

The modules never import each other (see docs/architecture.md), and control is no exception: it
knows alpha, beta and gamma only by the URL of their admin API. In the all-in-one, ``dps run``
passes those URLs in ``DPS_ADMIN_URLS`` (a JSON object ``{"alpha": "http://...", ...}``, which
also carries ``--admin-port-base``); otherwise they come from ``pipeline.yaml`` (``admin.bind``
and ``admin.ports``), or from ``DPS_ADMIN_URLS`` set by the operator when modules run on other
hosts.
"""

from __future__ import annotations

import json
import os
import ssl
from typing import Any, Final

import httpx

from dps.admin.tls import base_url, client_verify
from dps.config import PipelineConfig

#: The processing modules, in the order records pass through them.
MODULES: Final = ("alpha", "beta", "gamma")
#: The environment variable with the admin API URL of each module (a JSON object).
URLS_ENV: Final = "DPS_ADMIN_URLS"


class ModuleUnreachable(Exception):
    """A module's admin API did not answer (connection refused, timeout)."""


def module_urls(config: PipelineConfig) -> dict[str, str]:
    """The admin API URL of alpha, beta, gamma and control (see the module docstring).

    ``https://`` when ``admin.tls`` is set (:mod:`dps.admin.tls`).
    """
    admin = config.pipeline.admin
    urls = {
        name: base_url(config, admin.bind, getattr(admin.ports, name))
        for name in ("control", "alpha", "beta", "gamma")
    }
    raw = os.environ.get(URLS_ENV)
    if raw:
        given = json.loads(raw)
        if not isinstance(given, dict):
            raise ValueError(f"{URLS_ENV} must be a JSON object of module name to URL.")
        urls.update({str(k): str(v).rstrip("/") for k, v in given.items()})
    return urls


class ModuleClient:
    """Calls to the modules' admin APIs, with the admin token when one is configured.

    ``verify`` is httpx's certificate check: :func:`dps.admin.tls.client_verify` of the
    configuration (the admin CA when ``admin.tls`` is set).
    """

    def __init__(
        self,
        urls: dict[str, str],
        token: str | None = None,
        timeout: float = 10.0,
        *,
        verify: ssl.SSLContext | bool = True,
    ):
        self.urls = dict(urls)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=timeout, headers=headers, verify=verify)

    def close(self) -> None:
        self._client.close()

    def request(self, module: str, method: str, path: str, **kw: Any) -> httpx.Response:
        """One call; raises :class:`ModuleUnreachable` when the module does not answer."""
        url = self.urls[module] + path
        try:
            return self._client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise ModuleUnreachable(f"{module} ({url}) did not answer: {exc}") from exc

    def get_json(self, module: str, path: str, **kw: Any) -> Any:
        """GET and decode; a non-2xx answer raises with the module's error message."""
        response = self.request(module, "GET", path, **kw)
        return _json_or_raise(module, path, response)

    def post_json(self, module: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.request(module, "POST", path, json=body or {})
        return _json_or_raise(module, path, response)


def _json_or_raise(module: str, path: str, response: httpx.Response) -> Any:
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text[:200]}
    if response.status_code >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        raise RuntimeError(f"{module} {path} answered {response.status_code}: {message or data}")
    return data


def client_for(config: PipelineConfig, port_base: int | None = None) -> ModuleClient:
    """A client for the CLI: ``--admin-port-base N`` as ``dps run`` (control=N, alpha=N+1, ...)."""
    urls = module_urls(config)
    if port_base is not None:
        host = urls["alpha"].rsplit(":", 1)[0]
        names = ("control", "alpha", "beta", "gamma")
        urls = {name: f"{host}:{port_base + i}" for i, name in enumerate(names)}
    admin = config.pipeline.admin
    token = admin.client_token()
    return ModuleClient(urls, token, verify=client_verify(config))
