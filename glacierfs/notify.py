"""sd_notify for ``Type=notify`` services, with the standard library only.

systemd passes a unix datagram socket in ``$NOTIFY_SOCKET`` (a path, or an abstract name
written with a leading ``@``); the service sends ``KEY=value`` lines to it: ``READY=1`` once
the mount is live, ``STOPPING=1`` when it starts to unmount, ``STATUS=…`` for
``systemctl status``. Without ``$NOTIFY_SOCKET`` every call does nothing. A failure to send
is logged at debug level and otherwise ignored: a notification must never stop the mount.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    return value


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) as one datagram; True if sent."""
    target = os.environ.get(ENV)
    if not target or not fields:
        return False
    message = "\n".join(fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(target))
            sock.sendall(message)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", target, exc)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def stopping(status: str = "unmounting") -> bool:
    return notify("STOPPING=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
