"""A small HTTPS file server for the MTA-STS tests: ``python -m tests.internet.https_files DIR CERT KEY ADDR PORT``.

Serves DIR/HOST/PATH for the request's Host header (one directory per virtual host, as a
web server with name-based virtual hosts does), ``.txt`` as text/plain. Runs inside a test
namespace only.
"""

from __future__ import annotations

import http.server
import ssl
import sys
from pathlib import Path


def main() -> None:
    root, cert, key, addr, port = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            path = (root / host / self.path.lstrip("/")).resolve()
            if not path.is_relative_to(root.resolve()) or not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain" if path.suffix == ".txt" else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer((addr, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
