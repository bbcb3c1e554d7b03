"""``hash``: replace a field (personal data) with a keyed hash of its value.

With ``salt_ref`` the hash is an HMAC keyed by the secret, so values cannot be recovered by
hashing guesses; the same value always gives the same hash, so joins on it still work.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

from pydantic import Field

from dps.beta.transforms.base import FieldTransform, set_path
from dps.config.secrets import SecretRef
from dps.core.model import StrictModel
from dps.core.record import Record, get_path
from dps.core.registry import register


class HashConfig(StrictModel):
    """``transform.config`` of ``hash``."""

    field: str | None = Field(
        default=None, description="Field to hash; default: the field the rule's match tests."
    )
    algorithm: Literal["sha256", "sha512", "sha1", "md5", "blake2b"] = Field(
        default="sha256", description="Hash algorithm."
    )
    salt_ref: SecretRef | None = Field(
        default=None,
        description="Secret key (env:NAME, file:/path, vault:...) making the hash an HMAC.",
    )
    to: str | None = Field(
        default=None, description="Field receiving the hash; default: the field itself."
    )


@register("transforms", "hash")
class Hash(FieldTransform):
    """Hashes the value's text (numbers too); null is left alone."""

    Config = HashConfig
    config: HashConfig
    kind = "hash"

    def __init__(self, config: Any, target_field: str | None) -> None:
        super().__init__(config, target_field)
        self._key = config.salt_ref.resolve().encode() if config.salt_ref else None

    def change(self, value: Any) -> Any:
        if value is None:
            return None
        data = (value if isinstance(value, str) else str(value)).encode()
        if self._key is not None:
            return hmac.new(self._key, data, self.config.algorithm).hexdigest()
        return hashlib.new(self.config.algorithm, data).hexdigest()

    def apply(self, record: Record) -> str | None:
        if self.config.to is None:
            return super().apply(record)
        value = get_path(record.payload, self.field)
        if value is not None:
            set_path(record.payload, self.config.to, self.change(value))
        return None
