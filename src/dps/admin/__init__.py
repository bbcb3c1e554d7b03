"""The admin API every module serves: health, status, config reload, pause/drain, /metrics.

Modules build it with ``build_app(target)`` and serve it with ``AdminServer``; their own routes
read JSON bodies with ``read_json`` and answer with ``json_response`` / ``error_response``.
"""

from dps.admin.app import OPEN_PATHS, build_app
from dps.admin.common import JSONResponse, error_response, json_response, read_json
from dps.admin.server import AdminServer, AdminServerError

__all__ = [
    "OPEN_PATHS",
    "AdminServer",
    "AdminServerError",
    "JSONResponse",
    "build_app",
    "error_response",
    "json_response",
    "read_json",
]
