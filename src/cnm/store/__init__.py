"""Persistence: the Store protocol (api.py), its backends and the Mirror that caches a prefix.

The document store of the first releases (docs*.py) stays until every caller has moved."""
