"""Transform types: one file each, named after the verb, registered under ``transform.type``."""
