"""An HTTP proxy in front of moto's S3 server that fails requests on cue.

moto keeps its data in memory, so killing it to simulate an outage loses the data; this
proxy leaves moto running and breaks the path to it instead::

    with S3FaultProxy(moto_url) as proxy:          # point AWS_ENDPOINT_URL at proxy.url
        proxy.outage_after(r"/ledger/", b'"state":"submitted"', seconds=11)
        proxy.slow_down(r"^PUT ", times=12, every=2)  # 503 SlowDown, as S3 throttles
        proxy.refuse(r"^PUT .*/images/")              # 403 AccessDenied: a policy says no

An outage drops every connection without an answer (botocore sees the connection closed,
as when S3 refuses connections) from the first matching request until ``seconds`` later.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit



def _error(code: str) -> bytes:
    """An S3 error body, as botocore parses it into ``ClientError``'s code."""
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{code} (from the fault proxy)</Message></Error>").encode()


@dataclass
class _Rule:
    pattern: re.Pattern[str]  # matched against "METHOD /path"
    body: bytes | None  # and, when set, a substring of the request body
    kind: str  # "outage", "slowdown" or "refuse"
    seconds: float = 0.0
    times: int = 0
    every: int = 1
    seen: int = 0
    status: int = 503
    code: str = "SlowDown"
    armed_by: tuple[re.Pattern[str], bytes | None] | None = None  # inactive until seen


class S3FaultProxy:
    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self._upstream = (target.hostname, target.port)
        self._rules: list[_Rule] = []
        self._outage_until = 0.0
        self._lock = threading.Lock()
        self.dropped = 0
        self.throttled = 0
        self.refused = 0
        self.outages = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                body = self._body()
                verdict = proxy._verdict(f"{self.command} {self.path}", body)
                if verdict == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(verdict, _Rule):
                    self._answer(verdict.status, _error(verdict.code),
                                 {"Content-Type": "application/xml"})
                    return
                status, headers, payload = proxy._forward(self.command, self.path,
                                                          dict(self.headers), body)
                self._answer(status, payload, headers)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> S3FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- what to break ---------------------------------------------------------------------

    def outage_after(self, pattern: str, body: bytes | None = None, *, seconds: float) -> None:
        """From the first request matching ``pattern`` (and ``body``), drop all for ``seconds``."""
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern), body, "outage", seconds=seconds))

    def slow_down(self, pattern: str, *, times: int, every: int = 1) -> None:
        """Answer ``times`` of the matching requests 503 SlowDown: one in ``every``."""
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern), None, "slowdown", times=times,
                                     every=every))

    def refuse(self, pattern: str, *, status: int = 403, code: str = "AccessDenied",
               after: str | None = None, after_body: bytes | None = None) -> None:
        """Answer every matching request ``status`` with S3 error ``code``, until cleared
        (an expired role or a policy change: 403; a deleted bucket: 404 NoSuchBucket);
        with ``after``, only once a request matching it (and ``after_body``) has passed."""
        armed_by = (re.compile(after), after_body) if after else None
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern), None, "refuse", status=status,
                                     code=code, armed_by=armed_by))

    def clear(self) -> None:
        """Every rule and outage gone: S3 works again."""
        with self._lock:
            self._rules.clear()
            self._outage_until = 0.0

    def _verdict(self, line: str, body: bytes) -> str | _Rule | None:
        with self._lock:
            now = time.monotonic()
            for rule in list(self._rules):
                if rule.armed_by is not None:
                    armed, armed_body = rule.armed_by
                    if armed.search(line) and (not armed_body or armed_body in body):
                        rule.armed_by = None  # from the next request on
                    continue
                if not rule.pattern.search(line) or (rule.body and rule.body not in body):
                    continue
                if rule.kind == "outage":
                    self._rules.remove(rule)
                    self._outage_until = now + rule.seconds
                    self.outages += 1
                elif rule.kind == "slowdown":
                    rule.seen += 1
                    if (rule.seen - 1) % rule.every:
                        continue
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                    self.throttled += 1
                    return rule
                elif rule.kind == "refuse":
                    self.refused += 1
                    return rule
            if now < self._outage_until:
                self.dropped += 1
                return "drop"
        return None

    def _forward(self, method: str, path: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            headers = {k: v for k, v in headers.items() if k.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body))
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()
