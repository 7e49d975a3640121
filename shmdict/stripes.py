"""``shmdict.stripes``: the documented name of the stripe-lock settings.

The stripe locks belong to the shared-memory backend,
:mod:`shmdict.backends.shm.stripes`; this name is bound to that very module,
so ``shmdict.stripes.POLL = 0.05`` changes the setting the backend reads.
"""
import sys

from .backends.shm import stripes as _stripes

sys.modules[__name__] = _stripes
