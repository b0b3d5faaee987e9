"""The verified store and the downloader: archive bytes on local disk, every chunk checked
against its tree hash before it is served; the diskcache index and its LRU; eviction within
``cache_size``; disk-full handling.

Knows no jobs: it stores and serves bytes of archives and is told what to fetch. Must not
import ``jobs``, ``catalog``, ``fuse`` or ``commands``.
"""
