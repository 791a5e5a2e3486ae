"""The offline stores behind one contract, as httpx keeps its transports:

base.py     ``OfflineStore``: the contract (files, batches and their lines, fine-tuning jobs and their
            events) and the logic every store shares
sqlite.py   ``SqliteOfflineStore``: one gateway's disk, under the state directory
redis.py    ``RedisOfflineStore``: a Redis that gateway replicas share, batch lines claimed from
            streams

The records they keep live in ``service/jobs/records.py``.
"""

from service.jobs.stores.base import OfflineStore
from service.jobs.stores.redis import RedisOfflineStore
from service.jobs.stores.sqlite import SqliteOfflineStore

__all__ = ["OfflineStore", "RedisOfflineStore", "SqliteOfflineStore"]
