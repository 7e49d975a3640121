"""The two peer backends that hold tables: shared memory and Redis.

* :mod:`shmdict.backends.shm`: one shared-memory segment per table on this
  host (the segment format, the C core, the tables, ``check`` and
  inspection);
* :mod:`shmdict.backends.redis`: the same tables on a Redis server.

Neither imports the other; both build on the backend-independent layers
below them (keys, layouts, handles, verbs, records, :class:`shmdict.table.
BaseTable`).  :mod:`shmdict.api` is the only module that knows both.
"""
