"""Placeholder: the emulator's command line (``glacierfs sim``) is being built."""


def main(argv: list[str]) -> int:
    raise SystemExit("glacierfs sim: not built yet")
