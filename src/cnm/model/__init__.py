"""Pure data: frozen dataclasses and validated value types.  No I/O, stdlib only."""
