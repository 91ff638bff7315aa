"""A webhook receiver for the integration test: appends every POST it gets to a file.

    python tests/integration/webhook_receiver.py PORT FILE

Each request becomes one JSON line: {"path": ..., "headers": {...}, "body": "<text>"}.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(port: int, path: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            record = {"path": self.path, "headers": dict(self.headers), "body": body}
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
