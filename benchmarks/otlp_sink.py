"""A local OTLP/HTTP sink that accepts every export and discards it.

``python -m benchmarks.otlp_sink PORT`` answers each POST (``/v1/traces``, ``/v1/metrics``, ...)
with 200 and an empty protobuf body, which is a valid empty Export*ServiceResponse. ``GET /stats``
returns how many exports and bytes it has seen, so the benchmark can prove spans really left the
server during the tracing runs. Standard library only.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Counts:
    lock = threading.Lock()
    posts = 0
    bytes = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with _Counts.lock:
            _Counts.posts += 1
            _Counts.bytes += length
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        body = json.dumps({"posts": _Counts.posts, "bytes": _Counts.bytes}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a log line per export would only cost CPU on the measured machine."""


def main(argv: list[str]) -> int:
    """Serve on 127.0.0.1:PORT until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", int(argv[0])), _Handler)
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
