"""A minimal Alertmanager webhook receiver: every notification POSTed to it is appended, one JSON object a
line, to a file (and stderr), so an alert is seen somewhere even before a pager or chat integration is
wired. docker-compose runs it as `alert-receiver`; tests/ops/test_alerting.py runs it in-process.

    python -m gateway.ops.alert_receiver --listen 0.0.0.0:9095 --file /data/alerts.jsonl"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BODY_BYTES_MAX = 1 << 20  # a notification larger than this is refused (413)


def receiver(host: str, port: int, on_notification: Callable[[dict[str, Any]], None]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > BODY_BYTES_MAX:
                self.send_response(413)
                self.end_headers()
                return
            try:
                notification = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            on_notification(notification)
            self.send_response(200)
            self.end_headers()

        def do_GET(self) -> None:  # a health probe
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--listen", default="127.0.0.1:9095")
    parser.add_argument("--file", default="alerts.jsonl", help="where notifications are appended")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    path = Path(args.file)
    lock = threading.Lock()

    def record(notification: dict[str, Any]) -> None:
        line = json.dumps(notification, ensure_ascii=False)
        with lock, path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        print(line, file=sys.stderr, flush=True)

    server = receiver(host, int(port), record)
    print(f"alert receiver on http://{args.listen}/ -> {path}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
