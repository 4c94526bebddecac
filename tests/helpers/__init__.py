"""Shared test kit: real servers on free ports (redis-server, PostgreSQL databases, chatcast
processes), protocol clients for every transport, and the exactness assembler.

Fixtures that use these live in `tests/conftest.py`.
"""
