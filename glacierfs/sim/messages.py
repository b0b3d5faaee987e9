"""Request and response values passed between the HTTP layer and the operation handlers, so the
handlers never touch sockets and the server never knows Glacier's rules."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email.message import Message
from typing import BinaryIO

from glacierfs.sim.bodies import Body
from glacierfs.sim.errors import invalid, missing

# JSON request bodies are small (job parameters, control commands); anything bigger is a mistake.
MAX_JSON_BODY = 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Message
    rfile: BinaryIO
    content_length: int | None
    consumed: int = 0

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def remaining(self) -> int:
        return max(0, (self.content_length or 0) - self.consumed)

    def read_body(self) -> bytes:
        if self.content_length is not None and self.content_length > MAX_JSON_BODY:
            raise invalid("Request body too large")
        data = self.rfile.read(self.remaining) if self.remaining else b""
        self.consumed += len(data)
        return data

    def json(self, required: bool = True) -> object:
        raw = self.read_body()
        if not raw.strip():
            if required:
                raise missing("Required request body is missing")
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise invalid("Request body is not valid JSON") from None


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: Body | None = None  # when set, bytes stream_start .. +stream_length of it
    stream_start: int = 0
    stream_length: int = 0

    @property
    def length(self) -> int:
        return self.stream_length if self.stream is not None else len(self.body)


def json_response(status: int, data: object, headers: dict[str, str] | None = None) -> Response:
    out = Response(status=status, body=json.dumps(data).encode(), headers=dict(headers or {}))
    out.headers["Content-Type"] = "application/json"
    return out


def empty(status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(status=status, headers=dict(headers or {}))
