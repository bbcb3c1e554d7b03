"""Data Pipeline System."""
