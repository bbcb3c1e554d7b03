"""Core types every module builds on: the record envelope, errors, the plugin registry."""
