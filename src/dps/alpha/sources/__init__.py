"""Source types: one file each, registered under the ``source_type`` used in YAML."""
