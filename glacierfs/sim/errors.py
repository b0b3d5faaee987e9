"""Glacier-style errors: every failure the emulator reports travels as one of these, so each bad
request ends as the JSON body ``{"code", "message", "type"}`` that botocore turns into a
``ClientError`` with the right code."""

from __future__ import annotations


class GlacierError(Exception):
    """An error answer: HTTP status, Glacier error code, message, and Client/Server type."""

    def __init__(self, status: int, code: str, message: str, kind: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.kind = kind or ("Server" if status >= 500 else "Client")

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "type": self.kind}


def invalid(message: str) -> GlacierError:
    return GlacierError(400, "InvalidParameterValueException", message)


def missing(message: str) -> GlacierError:
    return GlacierError(400, "MissingParameterValueException", message)


def not_found(message: str) -> GlacierError:
    return GlacierError(404, "ResourceNotFoundException", message)


def access_denied(message: str) -> GlacierError:
    return GlacierError(403, "AccessDeniedException", message)
