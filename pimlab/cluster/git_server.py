"""A Git server on loopback: git's own smart-HTTP backend (`git http-backend`) behind a tiny
HTTP server, so Flux's source-controller clones the lab over HTTP as it would from a forge.

`git http-backend` is a CGI program; this module is the web server that calls it, one request
at a time per thread. It serves every bare repository below `--root`, read-only (the backend
refuses `git-receive-pack` to anonymous users): commits reach the served repository by a push
to its path on disk, `git push .lab/gitops/git/pim-sre-lab.git HEAD:main`.

    python -m pimlab.cluster.git_server --root DIR --port PORT
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pimlab.cluster.layout import HOST

# Request headers the backend reads as CGI variables (gzip bodies, protocol v2).
_FORWARDED = ("Content-Encoding", "Git-Protocol")


def cgi_env(root: str, method: str, path: str, headers, client: str) -> dict[str, str]:
    """The CGI environment `git http-backend` expects for one request."""
    url = urlsplit(path)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_PROJECT_ROOT": root,
        "GIT_HTTP_EXPORT_ALL": "1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": method,
        "PATH_INFO": url.path,
        "QUERY_STRING": url.query,
        "REMOTE_ADDR": client,
        "CONTENT_TYPE": headers.get("Content-Type", ""),
        "CONTENT_LENGTH": headers.get("Content-Length", "0"),
    }
    for name in _FORWARDED:
        if headers.get(name):
            env["HTTP_" + name.upper().replace("-", "_")] = headers[name]
    return env


def split_cgi_output(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a CGI response; `Status:` sets the code (200 without it)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if not _:
        head, _, body = raw.partition(b"\n\n")
    status, headers = 200, []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers.append((name, value.strip()))
    return status, headers, body


class Handler(BaseHTTPRequestHandler):
    root = "."
    protocol_version = "HTTP/1.1"

    def _backend(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = cgi_env(self.root, self.command, self.path, self.headers, self.client_address[0])
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        if proc.returncode != 0 and not proc.stdout:
            self.send_error(500, proc.stderr.decode(errors="replace").strip()[:200])
            return
        status, headers, payload = split_cgi_output(proc.stdout)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _backend

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="directory holding the bare repositories")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    Handler.root = os.path.abspath(args.root)
    server = ThreadingHTTPServer((HOST, args.port), Handler)
    print(f"serving {Handler.root} on http://{HOST}:{args.port}/", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
