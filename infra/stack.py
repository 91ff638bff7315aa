"""The local stand-ins, for the demo and the tests: moto's S3 server and fake AWS creds.

    with MotoS3() as s3:           # a real HTTP server on a free loopback port
        os.environ.update(s3.env)  # AWS_ENDPOINT_URL and harmless credentials
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading

from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1"}


_PUT_LOCK = threading.Lock()


def make_moto_puts_atomic() -> None:
    """Serialise moto's PutObject in this process (idempotent).

    moto 5.2.5 checks If-None-Match / If-Match and then writes with nothing in between, so
    under load two conditional puts of one key can both win. Real S3 decides conditional
    writes atomically; the ledger's claims rely on it, so the stand-in must too.
    """
    if getattr(S3Response.put_object, "_flashgen_atomic", False):
        return
    unlocked = S3Response.put_object

    def put_object(self):  # type: ignore[no-untyped-def]
        with _PUT_LOCK:
            return unlocked(self)

    put_object._flashgen_atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoS3:
    """moto's server in a background thread; its state lives as long as the object."""

    def __init__(self, port: int = 0) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.url = ""

    def __enter__(self) -> MotoS3:
        make_moto_puts_atomic()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    @property
    def env(self) -> dict[str, str]:
        return {**FAKE_AWS, "AWS_ENDPOINT_URL": self.url}


if __name__ == "__main__":
    # `python -m flashgen.infra.stack --port P`: moto's S3 server as its own process, atomic puts.
    parser = argparse.ArgumentParser(description="moto's S3 server with atomic conditional puts")
    parser.add_argument("--port", type=int, default=5000)
    with MotoS3(parser.parse_args().port) as s3:
        print(s3.url, flush=True)
        threading.Event().wait()
