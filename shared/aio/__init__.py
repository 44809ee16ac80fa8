"""The asyncio side of shared/: what both daemons run around the pure core.

Everything outside this subpackage in shared/ is free of I/O (tests/unit/test_layering.py
checks it); here live the session driver, the channels (QUIC, in-memory), the database
thread and SQL store base, and structured concurrency for Python 3.10.
"""
