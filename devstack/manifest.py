"""The manifest the Firebase CLI reads: firebase-functions' admin server, `GET /__/functions.yaml`.

`firebase deploy` and `firebase emulators:start` run `firebase_functions/private/serving.py` in the
functions source folder with ADMIN_PORT set and read the endpoints from it; this does exactly that,
so tests and deploy.sh's dry run see what the CLI sees, without the CLI.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from devstack.procs import Child, free_port, http_ok, wait_until

ROOT = Path(__file__).resolve().parent.parent


def serving_script() -> Path:
    import firebase_functions

    return Path(firebase_functions.__file__).parent / "private" / "serving.py"


def discover(
    source: Path = ROOT, *, env: dict[str, str] | None = None, log_dir: Path | None = None
) -> dict[str, Any]:
    """The parsed `/__/functions.yaml` of `source`/main.py, served the way the Firebase CLI serves it."""
    import yaml

    port = free_port()
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {}), "ADMIN_PORT": str(port)}
    log = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"admin-server-{port}.log"
    child = Child([sys.executable, str(serving_script())], log=log, env=full, cwd=source)
    url = f"http://127.0.0.1:{port}/__/functions.yaml"
    try:
        wait_until(
            lambda: http_ok(url, timeout=2),
            what="firebase-functions admin server",
            timeout=60,
            proc=child.proc,
            log=log,
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            manifest: dict[str, Any] = yaml.safe_load(response.read())
    finally:
        child.stop()
    return manifest


if __name__ == "__main__":
    import json

    print(json.dumps(discover(), indent=2, sort_keys=True))
