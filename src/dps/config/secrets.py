"""Secret references: ``env:NAME``, ``file:/path`` and ``vault:secret/path/key``.

Configuration never holds a secret, only a reference to one (keys ending in ``_ref``). A
reference is checked for its form at load and resolved only when a plugin uses it, so a
``vault:`` reference in a disabled source does not stop a pipeline that has no Vault. Resolved
values are never logged, exported or shown: :class:`SecretRef` renders as its reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from dps.core.errors import SecretError

SCHEMES = ("env", "file", "vault")
REDACTED = "***"


class SecretRef(str):
    """A validated ``scheme:target`` reference; :meth:`resolve` fetches the value when needed."""

    __slots__ = ()

    @property
    def scheme(self) -> str:
        return self.split(":", 1)[0]

    @property
    def target(self) -> str:
        return self.split(":", 1)[1]

    def resolve(self, environ: dict[str, str] | None = None) -> str:
        """The secret's value. Raises :class:`SecretError` saying what is missing and where."""
        env = os.environ if environ is None else environ
        if self.scheme == "env":
            try:
                return env[self.target]
            except KeyError:
                raise SecretError(
                    f"Secret {self} is not set: the environment variable {self.target} is missing."
                ) from None
        if self.scheme == "file":
            path = Path(self.target)
            try:
                return path.read_text().rstrip("\n")
            except OSError as exc:
                raise SecretError(f"Secret {self} cannot be read: {exc.strerror}.") from None
        return _resolve_vault(self, env)

    @classmethod
    def parse(cls, value: Any) -> SecretRef:
        if not isinstance(value, str):
            raise ValueError(
                f"{value!r} is not a secret reference; expected env:, file: or vault:."
            )
        scheme, sep, target = value.partition(":")
        if not sep or scheme not in SCHEMES or not target:
            raise ValueError(
                f"{value!r} is not a secret reference; expected env:NAME, file:/path or "
                "vault:secret/path/key."
            )
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
            json_schema_input_schema=core_schema.str_schema(),
        )


def _resolve_vault(ref: SecretRef, env: Any) -> str:
    """Read ``vault:secret/path/key`` from Vault's KV v2 API (``VAULT_ADDR``, ``VAULT_TOKEN``)."""
    addr = env.get("VAULT_ADDR")
    token = env.get("VAULT_TOKEN")
    if not addr or not token:
        raise SecretError(
            f"Secret {ref} needs Vault, but no Vault is configured: set VAULT_ADDR and VAULT_TOKEN "
            "(or use an env: or file: reference)."
        )
    mount, _, rest = ref.target.partition("/")
    path, _, key = rest.rpartition("/")
    if not path or not key:
        raise SecretError(f"Secret {ref} is not of the form vault:<mount>/<path>/<key>.")
    import httpx

    url = f"{addr.rstrip('/')}/v1/{mount}/data/{path}"
    try:
        response = httpx.get(url, headers={"X-Vault-Token": token}, timeout=10.0)
    except httpx.HTTPError as exc:
        raise SecretError(f"Secret {ref}: Vault at {addr} cannot be reached: {exc}.") from None
    if response.status_code != 200:
        raise SecretError(f"Secret {ref}: Vault answered {response.status_code} for {path}.")
    data = response.json().get("data", {}).get("data", {})
    if key not in data:
        raise SecretError(f"Secret {ref}: Vault has no key {key!r} at {path}.")
    return str(data[key])
