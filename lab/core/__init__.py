"""The pure core: frozen records, sequence arithmetic, the TCP state table and analyzers.

Nothing in here does I/O or reads a clock; tests/unit/test_purity.py enforces it.
"""
