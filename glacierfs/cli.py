"""Command line entry point: ``glacierfs SOURCE MOUNTPOINT [-o OPTS] [-f]`` mounts, and
sub-commands (``sim``, ``status``, ``restore``, ``wait``, ``select``, ``copy``) do the rest.

The mount form is what ``mount.fuse3`` runs, so it must look like any mount helper: positional
SOURCE and MOUNTPOINT, options after ``-o``. Sub-command names cannot clash with a SOURCE, which
is always a region (``us-east-1``) or ``ACCOUNT@REGION``.
"""

from __future__ import annotations

import sys

SUBCOMMANDS = ("sim", "status", "restore", "wait", "select", "copy", "demo")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        name, rest = args[0], args[1:]
        if name == "sim":
            from glacierfs.sim.cli import main as sim_main
            return sim_main(rest)
        from glacierfs import commands
        return commands.main(name, rest)
    from glacierfs.daemon import main as mount_main
    return mount_main(args)


if __name__ == "__main__":
    sys.exit(main())
