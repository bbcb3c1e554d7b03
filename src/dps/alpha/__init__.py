"""Module Alpha: ingest records from sources; parse, validate, dedupe; feed the transform queue."""
