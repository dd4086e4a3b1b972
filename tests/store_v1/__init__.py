"""Release 1's synchronous document store (v0.1.0's ``cnm.store.api``/``memory``/``sqlite``),
kept for tests and benchmarks only: it writes the schema-1 ``cnm.db`` files the SQLite
Store migrates, and it is the "before" of bench/ipam.py.  Nothing in ``src/`` uses it."""
