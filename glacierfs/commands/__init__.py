"""What a user runs besides the mount: ``status``, ``restore``, ``wait`` (``restorecmd``),
``copy`` (``copycmd``, ``copyplan``, ``pricing``), ``select`` (``selectcmd``) and the ``demo``.

They talk to a running mount through its extended attributes only (``common``), never to its
internals, so they work for any user who can see the mount. Nothing below imports this package.
"""
