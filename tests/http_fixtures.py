"""A scripted HTTP server on 127.0.0.1 for download tests: nothing beyond loopback is ever contacted."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """How one path answers; the first requests can fail or drop the connection to script a flaky source."""

    body: bytes = b""
    status: int = 200  # a permanent status other than 200 (404, 403, ...) is answered every time
    fail_first: int = 0  # the first N requests answer `fail_status`
    fail_status: int = 503
    retry_after: str | None = None
    drop_first: int = 0  # the next N requests send half the body (full Content-Length), then close
    ranges: bool = True  # honour Range; False answers 200 with the whole body every time
    etag: str | None = None
    hits: int = 0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class LoopbackServer:
    host: str = "127.0.0.1"
    port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **kwargs) -> str:
        self.routes[path] = Route(body=body, **kwargs)
        return self.url(path)

    def requests_for(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 5  # idle keep-alive connections end on their own

        def log_message(self, format, *args):  # keep test output quiet
            pass

        def _plain(self, status: int, extra: dict[str, str] | None = None) -> None:
            body = f"status {status}\n".encode()
            self.send_response(status)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with server.lock:
                server.seen.append(Seen(self.path, dict(self.headers.items())))
                route = server.routes.get(self.path)
                hit = route.hits if route else 0
                if route:
                    route.hits += 1
            if route is None or route.status != 200:
                self._plain(404 if route is None else route.status)
                return
            if hit < route.fail_first:
                extra = {"Retry-After": route.retry_after} if route.retry_after else None
                self._plain(route.fail_status, extra)
                return
            body, start = route.body, 0
            wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if route.ranges and wanted:
                start = int(wanted.group(1))
                if start >= len(body):
                    self._plain(416, {"Content-Range": f"bytes */{len(body)}"})
                    return
            payload = body[start:]
            self.send_response(206 if route.ranges and wanted else 200)
            if route.ranges and wanted:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            if route.etag:
                self.send_header("ETag", route.etag)
            self.send_header("Accept-Ranges", "bytes" if route.ranges else "none")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if hit < route.fail_first + route.drop_first:
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@contextlib.contextmanager
def loopback_server() -> Iterator[LoopbackServer]:
    """Serve on an ephemeral loopback port in a daemon thread; stopped when the block ends."""
    state = LoopbackServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
