"""Processes: one module's lifecycle, and the supervisor that runs all four."""
