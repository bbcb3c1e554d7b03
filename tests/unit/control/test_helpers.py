"""Small pieces of the operations plane: roles per endpoint, time windows, config headers."""

from __future__ import annotations

import pytest

from dps.admin.common import required_role
from dps.control.admin import parse_since
from dps.control.configs import config_headers, parse_version


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/admin/status", "viewer"),
        ("GET", "/api/export", "viewer"),
        ("POST", "/admin/pause", "operator"),
        ("POST", "/admin/config/reload", "operator"),
        ("POST", "/admin/dlq/replay", "operator"),
        ("POST", "/admin/jobs/gamma_dest_health/trigger", "operator"),
        ("POST", "/admin/emergency-stop", "admin"),
        ("POST", "/admin/dlq/purge", "admin"),
    ],
)
def test_required_role(method: str, path: str, role: str) -> None:
    assert required_role(method, path) == role


def test_parse_since() -> None:
    now = 1_000_000.0
    assert parse_since("24h", now) == now - 86400
    assert parse_since("30m", now) == now - 1800
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2024-01-01", now) == 1704067200.0
    assert parse_since("1700000000", now) == 1_700_000_000.0
    with pytest.raises(ValueError, match="expected a duration such as 24h"):
        parse_since("yesterday", now)


def test_the_manuals_configuration_header_is_read() -> None:
    text = (
        "# Example configuration header\n# Module: alpha\n# Version: 2.3.1\n"
        "# Last Modified: 2024-01-15\n# Modified By: ops-team\n# Change ID: CHG-2024-0115-001\n"
        "# Description: Increased batch size for improved throughput\nDEFAULT_BATCH_SIZE: 250\n"
        "# Change ID: not-a-header-any-more\n"
    )
    assert config_headers(text) == {
        "Module": "alpha",
        "Version": "2.3.1",
        "Last Modified": "2024-01-15",
        "Modified By": "ops-team",
        "Change ID": "CHG-2024-0115-001",
        "Description": "Increased batch size for improved throughput",
    }


def test_parse_version() -> None:
    assert parse_version("3") == ("control", 3)
    assert parse_version("alpha:2") == ("alpha", 2)
    with pytest.raises(ValueError, match="not valid"):
        parse_version("alpha:x")
