"""The kernel adapter: FUSE operations (inode ↔ entry, errno mapping), the extended attributes,
the status document, readahead. Thin: it translates between the kernel and the parts below and
holds no Glacier logic.

The only package that imports pyfuse3 (besides the entry point ``mount.py``). It may import
``catalog``, ``jobs`` and ``cache``; nothing imports it but ``mount.py``.
"""
