"""Parsers: raw bytes to payload dicts, one file per ``parsing.format``."""
