"""A local S3 endpoint (moto's S3 server, a third-party S3 API implementation) on loopback, for
the tests and the demo: select jobs write their output there, glacierfs reads it back through the
ordinary S3 API. moto is imported only here, and only when one is started."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

from glacierfs.sim.testing import DUMMY_KEY_ID, DUMMY_SECRET, REGION

START_TIMEOUT = 30.0   # seconds for moto's server to bind and answer; it takes well under one


@dataclass
class LocalS3:
    server: Any
    url: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=DUMMY_KEY_ID,
                            aws_secret_access_key=DUMMY_SECRET, region_name=REGION)

    def stop(self) -> None:
        self.server.stop()


def _check_free(host: str, port: int) -> None:
    """Raise OSError if ``port`` cannot be bound (as the server will bind it, address reuse
    on): moto's ``start()`` would otherwise wait for ever, its server thread having died."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"port {port} is in use ({exc.strerror})") from None


def start(host: str = "127.0.0.1", port: int = 0, buckets: tuple[str, ...] = ()) -> LocalS3:
    """Start moto's threaded S3 server (port 0: a free one) and create ``buckets``."""
    from moto.server import ThreadedMotoServer

    if port:
        _check_free(host, port)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    starting = threading.Thread(target=server.start, daemon=True)
    starting.start()
    starting.join(START_TIMEOUT)
    if starting.is_alive():   # its server thread died (the port was taken meanwhile)
        raise OSError(f"moto's S3 server did not start on {host}:{port}")
    real_host, real_port = server.get_host_and_port()
    s3 = LocalS3(server=server, url=f"http://{real_host}:{real_port}")
    client = s3.client()
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    return s3
