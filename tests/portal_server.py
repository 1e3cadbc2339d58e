"""A loopback stand-in for the CryoET Data Portal, for offline tests, benchmarks and the README example
(``python tests/portal_server.py ROOT [PORT]`` serves ROOT until interrupted).

One stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) that

* answers the GraphQL POSTs of the real ``cryoet_data_portal`` client at ``/graphql``: the query is
  executed by graphql-core against the client's own copy of the portal schema
  (``cryoet_data_portal/data/schema.graphql``), over the rows of ``<root>/portal.json`` (written by
  :func:`relion_py.tools.simulate.write_portal`); ``where`` filters with the scalar comparators (_eq, _neq,
  _in, _nin, _gt, _gte, _lt, _lte, _is_null, _like, _ilike) are evaluated here, anything else is a
  GraphQL error (so a query the test server cannot answer fails loudly instead of returning everything);
* serves the files below ``<root>`` by GET (the portal's https URLs), and path-style S3 GetObject
  (``/<bucket>/<key>``, for ``BOTO_ENDPOINT_URL``), 404 with an S3 ``NoSuchKey`` body when absent;
* answers byte ranges (``Range: bytes=a-b`` and suffixes ``bytes=-n``) with 206, as S3 and the portal's
  CDN do (sharded zarr arrays are read by range);
* behaves like a far-away link when asked: ``latency_s`` before every answer and a ``bandwidth`` (bytes/s)
  shared by all connections;
* logs every request (method, path, status, body bytes sent; ``GET /_requests`` returns the log as JSON)
  and injects faults on request: HTTP 500 or 503, a body cut short of its Content-Length ("truncate"), a
  short body with a matching Content-Length ("corrupt"), a connection closed without an answer ("drop") or
  reset (TCP RST, "reset"), no answer for ``stall_s`` ("timeout"), or a body trickling at 1.3 kB/s
  ("trickle").
"""
import json
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import cryoet_data_portal
from graphql import build_schema, graphql_sync

SCHEMA = os.path.join(os.path.dirname(cryoet_data_portal.__file__), "data", "schema.graphql")


@dataclass
class Request:
    method: str
    path: str
    status: int
    nbytes: int


def _like(pattern, value, flags=0):
    """SQL LIKE: % any run, _ any character."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return value is not None and re.fullmatch(regex, str(value), flags | re.S) is not None


_OPS = {
    "_eq": lambda v, a: v == a, "_neq": lambda v, a: v != a, "_in": lambda v, a: v in a,
    "_nin": lambda v, a: v not in a, "_gt": lambda v, a: v is not None and v > a,
    "_gte": lambda v, a: v is not None and v >= a, "_lt": lambda v, a: v is not None and v < a,
    "_lte": lambda v, a: v is not None and v <= a, "_is_null": lambda v, a: (v is None) == a,
    "_like": lambda v, a: _like(a, v), "_ilike": lambda v, a: _like(a, v, re.I),
}


def _matches(row, where):
    for field, condition in where.items():
        if not isinstance(condition, dict) or not condition or not set(condition) <= set(_OPS):
            raise ValueError(f"the test portal cannot evaluate the filter {field}: {condition}")
        value = row.get(field)
        if not all(_OPS[op](value, arg) for op, arg in condition.items()):
            return False
    return True


class PortalServer:
    """``with PortalServer(root) as server: server.url ...``"""

    def __init__(self, root, port=0):
        self.root = os.fspath(root)
        with open(SCHEMA) as fh:
            self.schema = build_schema(fh.read())
        self.log = []
        self.faults = []          # [path substring, mode, remaining count]
        self.latency_s = 0.0      # waited before every answer
        self.bandwidth = None     # bytes/s of the one link all answers share (None: unlimited)
        self.stall_s = 5.0        # how long a "timeout" fault keeps the client waiting
        self._link_free = 0.0     # monotonic time at which the link has sent everything queued so far
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.graphql_url = self.url + "/graphql"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_fault(self, pattern, mode, times=1):
        """The next ``times`` requests whose path contains ``pattern`` fail with ``mode``: '500', '503',
        'truncate', 'corrupt', 'drop', 'reset', 'timeout' or 'trickle'."""
        with self._lock:
            self.faults.append([pattern, mode, times])

    def reset(self):
        with self._lock:
            self.log.clear()
            self.faults.clear()
        self.latency_s, self.bandwidth, self.stall_s = 0.0, None, 5.0

    def send_body(self, wfile, body, trickle=False):
        """Write ``body`` through the shared link: at ``bandwidth`` bytes/s over all connections together
        (each 64-kB piece waits for its turn on the link), or as a trickle: 256 bytes every 0.2 s, each
        piece in time for a client's read timeout but the whole far too slow."""
        piece = 256 if trickle else 1 << 16
        for start in range(0, len(body), piece):
            part = body[start:start + piece]
            if trickle:
                time.sleep(0.2)
            elif self.bandwidth:
                with self._lock:       # the piece is on the link from begin to its end
                    end = self._link_free = max(time.monotonic(), self._link_free) + len(part) / self.bandwidth
                delay = end - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            wfile.write(part)

    def requests(self, pattern="", method="GET"):
        """Logged requests whose path contains ``pattern`` (of any method if ``method`` is empty)."""
        with self._lock:
            return [r for r in self.log if method in ("", r.method) and pattern in r.path]

    def _take_fault(self, path):
        with self._lock:
            for fault in self.faults:
                if fault[0] in path and fault[2] > 0:
                    fault[2] -= 1
                    return fault[1]
        return None

    def _record(self, method, path, status, nbytes):
        with self._lock:
            self.log.append(Request(method, path, status, nbytes))

    def graphql(self, body):
        request = json.loads(body)
        with open(os.path.join(self.root, "portal.json")) as fh:
            tables = json.load(fh)

        def resolver(rows):
            def resolve(info, where=None, orderBy=(), limitOffset=None):
                if orderBy or limitOffset:
                    raise ValueError("the test portal does not support orderBy or limitOffset")
                return [row for row in rows if _matches(row, where or {})]
            return resolve

        result = graphql_sync(self.schema, request["query"],
                              root_value={k: resolver(v) for k, v in tables.items()},
                              variable_values=request.get("variables"))
        answer = {"data": result.data}
        if result.errors:
            answer["errors"] = [e.formatted for e in result.errors]
        return json.dumps(answer).encode()


def _handler(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status, body, content_type="application/octet-stream", content_range=None):
            path = urlsplit(self.path).path
            fault = server._take_fault(path)
            if fault in ("drop", "reset", "timeout"):
                server._record(self.command, path, 0, 0)
                time.sleep(server.latency_s + (server.stall_s if fault == "timeout" else 0.0))
                if fault == "reset":           # SO_LINGER 0: close() sends RST instead of FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            time.sleep(server.latency_s)
            if fault in ("500", "503"):
                status, body, content_range = int(fault), b"injected server error", None
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if content_range:
                self.send_header("Content-Range", content_range)
            sent = body[:len(body) // 2] if fault in ("truncate", "corrupt") else body
            self.send_header("Content-Length", str(len(sent) if fault == "corrupt" else len(body)))
            self.end_headers()
            try:
                server.send_body(self.wfile, sent, trickle=fault == "trickle")
            except (BrokenPipeError, ConnectionResetError):   # the client gave up (a trickle's deadline)
                self.close_connection = True
            if fault == "truncate":
                self.close_connection = True
            server._record(self.command, path, status, len(sent))

        def do_GET(self):
            if self.path == "/_requests":       # the log, for a client in another process (not logged)
                log = server.requests(method="")
                body = json.dumps([[r.method, r.path, r.status, r.nbytes] for r in log]).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            rel = unquote(urlsplit(self.path).path).lstrip("/")
            if ".." in rel.split("/"):
                return self._send(400, b"bad path")
            path = os.path.join(server.root, *rel.split("/"))
            if not os.path.isfile(path):
                return self._send(404, b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code>"
                                       b"<Message>The specified key does not exist.</Message></Error>",
                                  "application/xml")
            size = os.path.getsize(path)
            wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
            if wanted and wanted.group(1):
                first = int(wanted.group(1))
                last = min(int(wanted.group(2)) if wanted.group(2) else size - 1, size - 1)
            elif wanted and wanted.group(2):
                first, last = max(size - int(wanted.group(2)), 0), size - 1
            else:
                with open(path, "rb") as fh:
                    return self._send(200, fh.read())
            if first > last:
                return self._send(416, b"range not satisfiable")
            with open(path, "rb") as fh:                # only the range: shards are read piece by piece
                fh.seek(first)
                self._send(206, fh.read(last + 1 - first), content_range=f"bytes {first}-{last}/{size}")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if urlsplit(self.path).path != "/graphql":
                return self._send(404, b"not found")
            self._send(200, server.graphql(body), "application/json")

    return Handler


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="serve ROOT as a loopback CryoET Data Portal")
    parser.add_argument("root")
    parser.add_argument("port", type=int, nargs="?", default=8000)
    parser.add_argument("--latency_ms", type=float, default=0.0, help="wait before every answer")
    parser.add_argument("--bandwidth_mb", type=float, default=0.0, help="MB/s shared by all answers (0: no limit)")
    args = parser.parse_args()
    with PortalServer(args.root, args.port) as running:
        running.latency_s, running.bandwidth = args.latency_ms / 1000, args.bandwidth_mb * 1e6 or None
        print(f"serving {running.root} at {running.url} (GraphQL: {running.graphql_url}); Ctrl-C stops",
              flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
