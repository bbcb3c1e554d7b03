"""Enrichment sources (one file per source type) and the cache lookups go through."""
