"""What a user runs besides the mount: ``status``, ``restore``, ``wait`` (``restorecmd``),
``copy`` (``copycmd``, ``copyplan``, ``pricing``), ``select`` (``selectcmd``) and the ``demo``.

They talk to a running mount through its extended attributes only (``common``), never to its
internals, so they work for any user who can see the mount. The one exception is
``glaciersrc``: a ``glacier://`` source runs the mount's catalog, lifecycle and cache inside the
copy process (no kernel), as ``mount.py`` assembles them. Nothing below imports this package.
"""
