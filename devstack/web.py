"""Serve the reference web client (web/public, bundled by `scripts/setup`) on 127.0.0.1, with the
`config.json` it reads: the Firebase project, the Auth emulator and each function's URL (the packs
and plans on sale, with their prices, the page reads from the `catalog` function).

Deployed, the same files go to any static host with a config.json written for that project.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ROOT / "web" / "public"


def client_config(project: str, auth_host: str, functions: dict[str, str]) -> dict[str, Any]:
    """The page's config.json for a local stack (`functions`: function name -> URL, `catalog`'s
    included)."""
    return {
        "firebase": {
            "apiKey": "local-emulator",
            "authDomain": f"{project}.firebaseapp.com",
            "projectId": project,
        },
        "authEmulator": f"http://{auth_host}",
        "functions": functions,
    }


class WebClient:
    """A static file server for web/public on a free (or given) port; `/config.json` is `config`."""

    def __init__(self, config: dict[str, Any] | None = None, port: int = 0) -> None:
        if not (PUBLIC / "app.js").exists():
            raise RuntimeError(
                f"{PUBLIC / 'app.js'} is missing: run scripts/setup (it bundles the web client)"
            )
        self.config = config or {}
        client = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/config.json":
                    body = json.dumps(client.config).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Cache-Control", "no-store")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=str(PUBLIC)))
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self.url = self.origin + "/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
