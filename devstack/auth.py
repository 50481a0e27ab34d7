"""The Firebase Auth emulator from firebase-tools (installed by `scripts/setup` with npm ci)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devstack.procs import Child, free_port, http_ok, wait_until

ROOT = Path(__file__).resolve().parent.parent
# firebase-tools, installed by `scripts/setup` (npm ci in tools/firebase, outside the functions source folder).
FIREBASE_CLI = ROOT / "tools" / "firebase" / "node_modules" / ".bin" / "firebase"


class AuthEmulator:
    """`firebase emulators:start --only auth` on a free port, with its own firebase.json."""

    def __init__(self, project: str, *, log_dir: Path, port: int | None = None, wait: bool = True) -> None:
        binary = FIREBASE_CLI
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: run scripts/setup (npm ci installs firebase-tools)")
        self.project = project
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="auth-emulator-"))
        hub, logging_port = free_port(), free_port()
        config = {
            "emulators": {
                "auth": {"host": "127.0.0.1", "port": self.port},
                "hub": {"host": "127.0.0.1", "port": hub},
                "logging": {"host": "127.0.0.1", "port": logging_port},
                "ui": {"enabled": False},
            }
        }
        (self._dir / "firebase.json").write_text(json.dumps(config))
        env = {**os.environ, "FIREBASE_CLI_DISABLE_UPDATE_CHECK": "true", "CI": "true"}
        env.pop("FIRESTORE_EMULATOR_HOST", None)
        argv = [
            str(binary),
            "emulators:start",
            "--only",
            "auth",
            "--project",
            project,
            "--config",
            str(self._dir / "firebase.json"),
        ]
        self.child = Child(argv, log=log_dir / f"auth-{self.port}.log", env=env, cwd=self._dir)
        self._ready = threading.Event()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        """Block until the emulator answers (the CLI takes 5 to 30 s to boot on a loaded machine)."""
        if not self._ready.is_set():
            wait_until(
                lambda: http_ok(f"http://{self.host}/"),
                what="Firebase Auth emulator",
                timeout=timeout,
                proc=self.child.proc,
                log=self.child.log,
            )
            self._ready.set()

    def _post(self, path: str, body: dict[str, Any], *, admin: bool = False) -> dict[str, Any]:
        url = f"http://{self.host}/identitytoolkit.googleapis.com/v1/{path}?key=local-emulator"
        # The emulator takes `Bearer owner` as an administrator's credential (what firebase-admin sends).
        headers = {"Content-Type": "application/json", **({"Authorization": "Bearer owner"} if admin else {})}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=10) as response:
            return dict(json.loads(response.read()))

    def create_account(self, uid: str) -> bool:
        """An account with this uid, as the Admin SDK's create_user makes it; False if it already exists."""
        try:
            self._post(f"projects/{self.project}/accounts", {"localId": uid}, admin=True)
        except urllib.error.HTTPError as exc:
            if exc.code == 400 and b"DUPLICATE_LOCAL_ID" in exc.read():
                return False
            raise
        return True

    def clear(self) -> None:
        """Delete every account (the emulator's own reset endpoint)."""
        url = f"http://{self.host}/emulator/v1/projects/{self.project}/accounts"
        with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10):
            pass

    def sign_up(self, email: str, password: str) -> tuple[str, str]:
        """Create an account as a client app would; returns (uid, ID token)."""
        data = self._post(
            "accounts:signUp", {"email": email, "password": password, "returnSecureToken": True}
        )
        return data["localId"], data["idToken"]

    def sign_in(self, email: str, password: str) -> tuple[str, str]:
        data = self._post(
            "accounts:signInWithPassword", {"email": email, "password": password, "returnSecureToken": True}
        )
        return data["localId"], data["idToken"]

    def stop(self) -> None:
        self.child.stop(grace=10)
        shutil.rmtree(self._dir, ignore_errors=True)
