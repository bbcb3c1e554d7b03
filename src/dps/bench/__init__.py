"""``dps bench``: the standard workload, the whole pipeline under it, floors and peers."""
