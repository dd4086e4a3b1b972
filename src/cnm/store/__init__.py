"""Persistence: the Store protocol (api.py), its SQLite backend and an in-memory one for tests."""
