"""The Redis backend: shmdict tables on a Redis (or Valkey) server.

``shmdict.open(..., backend="redis://host:port/db")`` comes here through
:mod:`shmdict.api`; see :mod:`shmdict.backends.redis.table` for how a table
is stored and :mod:`shmdict.backends.redis._lua` for its scripts.
"""
from .table import Connection, open_table, unlink_table

#: URL schemes this backend serves: one server, or a Redis Cluster through
#: any of its nodes.
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")

__all__ = ["SCHEMES", "Connection", "open_table", "unlink_table"]
