"""Command line entry point: ``glacierfs SOURCE MOUNTPOINT [-o OPTS] [-f]`` mounts, and
sub-commands (``sim``, ``status``, ``restore``, ``wait``, ``select``, ``copy``) do the rest.

The mount form is what ``mount.fuse3`` runs, so it must look like any mount helper: positional
SOURCE and MOUNTPOINT, options after ``-o``. Sub-command names cannot clash with a SOURCE, which
is always a region (``us-east-1``) or ``ACCOUNT@REGION``.
"""

from __future__ import annotations

import os
import sys

SUBCOMMANDS = ("sim", "status", "restore", "wait", "select", "copy", "demo")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        name, rest = args[0], args[1:]
        if name == "sim":
            from glacierfs.sim.cli import main as sim_main
            return sim_main(rest)
        return run_command(name, rest)
    from glacierfs.daemon import main as mount_main
    return mount_main(args)


def run_command(name: str, argv: list[str]) -> int:
    """Run one sub-command; a CommandError becomes one line on stderr and exit 1."""
    from glacierfs.commands.common import EXIT_FAILED, EXIT_OK, CommandError
    try:
        return _command(name)(argv)
    except CommandError as exc:
        print(f"glacierfs {name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # ``glacierfs status | head``: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _command(name: str):  # type: ignore[no-untyped-def]
    """The sub-command's entry, imported only when run (a mount loads no command code)."""
    if name in ("status", "restore", "wait"):
        from glacierfs.commands import restorecmd
        return getattr(restorecmd, f"cmd_{name}")
    if name == "select":
        from glacierfs.commands.selectcmd import cmd_select
        return cmd_select
    if name == "copy":
        from glacierfs.commands.copycmd import cmd_copy
        return cmd_copy
    from glacierfs.commands.demo import main as demo_main
    return demo_main


if __name__ == "__main__":
    sys.exit(main())
