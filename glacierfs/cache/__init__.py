"""The verified store and the downloader: archive bytes on local disk (one sparse file per
archive), every chunk checked against its tree hash before it is served; the diskcache index
and its LRU; eviction within ``cache_size`` by hole punching; disk-full handling; moving a
previous release's cache into this layout.

Knows no jobs: it stores and serves bytes of archives and is told what to fetch. Must not
import ``jobs``, ``catalog``, ``fuse`` or ``commands``.
"""
