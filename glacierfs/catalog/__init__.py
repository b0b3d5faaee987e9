"""What the vaults hold, as names: inventories fetched and refreshed (``inventories``), parsed
(``inventory``), descriptions decoded into paths and mtimes (``names``), and the namespace of
inodes in SQLite (``namespace``).

Must not import ``fuse``, ``jobs`` or ``commands``; it reaches AWS only through ``aws``.
"""
