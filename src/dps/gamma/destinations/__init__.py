"""Destination types: one file each, named after the system they write to."""
