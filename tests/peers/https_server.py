"""A small HTTPS server for tests (MTA-STS policies): ``with HTTPSServer("127.0.14.20", 0, cert, key) as web:``.

Every GET is answered with ``web.status``, ``web.content_type`` and ``web.body`` (settable between
requests; ``web.location`` adds a Location header for redirects); ``web.paths`` lists the paths asked.
Python's ``http.server`` with TLS, in a daemon thread; leaving the block shuts it down and joins it.
Port 0 picks a free port (``web.port``).
"""

from __future__ import annotations

import http.server
import ssl
import threading
from pathlib import Path

from tests.peers.knot import free_port


class HTTPSServer:
    """An HTTPS server answering every GET with what the test set."""

    def __init__(self, address: str, port: int, cert: Path, key: Path) -> None:
        self.status, self.content_type, self.body, self.location = 200, "text/plain", "", ""
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                data = outer.body.encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(data)))
                if outer.location:
                    self.send_header("Location", outer.location)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.port = port or free_port(address)
        self.httpd = http.server.ThreadingHTTPServer((address, self.port), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> HTTPSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
