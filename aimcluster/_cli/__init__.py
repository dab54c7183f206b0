"""The command line, a client of the public API only (tests/test_layout.py checks it)."""
