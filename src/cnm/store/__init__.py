"""Persistence: the Store protocol (api.py), its backends (sqlite.py local, etcd.py global,
memory.py the reference), the Mirror that caches a prefix, and the record codec."""
