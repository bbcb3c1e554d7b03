"""``rest_api``: poll an HTTP API (the manual's Runbook A.1 format).

The configuration model is complete, so A.1's source file validates and its secret references are
checked. Fetching is not built yet: a ``rest_api`` source that is enabled reports the status
``error`` with a message saying so, and Alpha keeps running its other sources.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dps.alpha.sources.base import Fetch, Source
from dps.config.secrets import SecretRef
from dps.core.errors import DpsError
from dps.core.model import StrictModel
from dps.core.registry import register


class AuthConfig(StrictModel):
    """``connection.auth_config:``: the credentials of the chosen ``auth_type``, as references."""

    token_url: str | None = Field(default=None, description="OAuth2 token endpoint.")
    client_id_ref: SecretRef | None = Field(default=None, description="OAuth2 client id.")
    client_secret_ref: SecretRef | None = Field(default=None, description="OAuth2 client secret.")
    scope: str | None = Field(default=None, description="OAuth2 scope, if the API needs one.")
    api_key_ref: SecretRef | None = Field(default=None, description="API key (auth_type api_key).")
    header: str = Field(default="X-API-Key", description="Header carrying the API key.")
    username_ref: SecretRef | None = Field(default=None, description="Basic auth user.")
    password_ref: SecretRef | None = Field(default=None, description="Basic auth password.")
    token_ref: SecretRef | None = Field(default=None, description="Bearer token.")


class RestApiConnection(StrictModel):
    """``connection:`` of a ``rest_api`` source."""

    endpoint: str = Field(description="URL polled for records.")
    auth_type: Literal["none", "api_key", "basic", "bearer", "oauth2"] = Field(
        default="none", description="How requests authenticate."
    )
    auth_config: AuthConfig = Field(default_factory=AuthConfig, description="Credentials.")
    timeout_ms: int = Field(default=30000, ge=1, description="Per-request timeout.")
    retry_count: int = Field(default=3, ge=0, description="Retries of a failed request.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")


class NotBuiltError(DpsError):
    """A configured capability whose runtime does not exist yet."""


@register("sources", "rest_api")
class RestApiSource(Source):
    """Polls ``connection.endpoint``. Not built yet: see the module docstring."""

    Config = RestApiConnection

    def fetch(self, max_items: int) -> Fetch:
        raise NotBuiltError(
            f"Source {self.source_id}: rest_api sources are not implemented in this version; "
            "the configuration is valid but nothing is fetched."
        )

    def commit(self, fetch: Fetch, records_read: dict[str, int]) -> None:
        raise NotBuiltError("rest_api sources are not implemented in this version.")

    def test(self) -> dict[str, Any]:
        return {"ok": False, "error": "rest_api sources are not implemented in this version."}
