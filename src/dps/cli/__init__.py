"""The ``dps`` command line: one file per command group."""
