"""``python -m dps`` is the ``dps`` command (the supervisor starts its children this way)."""

from dps.cli.main import app

app()
