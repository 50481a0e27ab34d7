"""The Firebase Emulator Suite serving this repo's functions: `firebase emulators:start --only functions,auth`.

Runs on a copy of the functions source (main.py, functions/, requirements.txt, and `venv` pointing
at this checkout's .venv), with its own firebase.json on free ports, `.env.<project>` for settings
and `.secret.local` for the declared secrets, as a Firebase developer's project would have them.
Firestore is the gcloud emulator, passed through FIRESTORE_EMULATOR_HOST (the functions inherit it
from the CLI). With `tasks=True` the Cloud Tasks emulator runs too (CLOUD_TASKS_EMULATOR_HOST),
and the sweep's fan-out dispatches to the task queue function through it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from devstack.auth import FIREBASE_CLI
from devstack.procs import Child, free_port, wait_until
from functions.lib.deployment import PURGE_FUNCTION

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-central1"


def copy_functions_source(dest: Path) -> None:
    """What a Firebase project's functions folder holds: code, requirements, and `venv`."""
    shutil.copy2(ROOT / "main.py", dest / "main.py")
    shutil.copy2(ROOT / "requirements.txt", dest / "requirements.txt")
    shutil.copytree(ROOT / "functions", dest / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "venv").symlink_to(ROOT / ".venv")


class EmulatorSuite:
    """`firebase emulators:start` on free ports; `url(name)` is a function's emulated URL."""

    def __init__(
        self,
        project: str,
        *,
        firestore_host: str,
        env: dict[str, str],
        secrets: dict[str, str],
        log_dir: Path,
        tasks: bool = False,
    ) -> None:
        if not FIREBASE_CLI.exists():
            raise RuntimeError(
                f"{FIREBASE_CLI} is missing: run scripts/setup (npm ci installs firebase-tools)"
            )
        self.project = project
        self.dir = Path(tempfile.mkdtemp(prefix="firebase-project-"))
        copy_functions_source(self.dir)
        ports = {name: free_port() for name in ("functions", "auth", "tasks", "hub", "logging")}
        self.functions_port = ports["functions"]
        self.auth_host = f"127.0.0.1:{ports['auth']}"
        self.tasks_host = f"127.0.0.1:{ports['tasks']}" if tasks else None
        emulators: dict[str, object] = {
            name: {"host": "127.0.0.1", "port": port} for name, port in ports.items()
        }
        emulators["ui"] = {"enabled": False}
        emulators["singleProjectMode"] = True
        config = {
            "functions": [{"source": ".", "codebase": "default", "runtime": "python311", "ignore": ["venv"]}],
            "emulators": emulators,
        }
        (self.dir / "firebase.json").write_text(json.dumps(config, indent=2))
        if tasks:
            # The purge tasks carry the task function's URL, as deployed (PURGE_TASK_URL): here the
            # Functions emulator's, where the Cloud Tasks emulator posts them.
            env = {"PURGE_TASK_URL": self.url(PURGE_FUNCTION), **env}
        (self.dir / f".env.{project}").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        (self.dir / ".secret.local").write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
        only = "functions,auth,tasks" if tasks else "functions,auth"
        cli_env = {
            **os.environ,
            "FIRESTORE_EMULATOR_HOST": firestore_host,
            "FIREBASE_CLI_DISABLE_UPDATE_CHECK": "true",
            "CI": "true",
        }
        for name in (
            "FIREBASE_AUTH_EMULATOR_HOST",
            "CLOUD_TASKS_EMULATOR_HOST",
            "GOOGLE_CLOUD_PROJECT",
            "K_SERVICE",
            "FUNCTION_TARGET",
        ):
            cli_env.pop(name, None)
        argv = [
            str(FIREBASE_CLI),
            "emulators:start",
            "--only",
            only,
            "--project",
            project,
            "--config",
            str(self.dir / "firebase.json"),
        ]
        self.child = Child(
            argv, log=log_dir / f"emulator-suite-{self.functions_port}.log", env=cli_env, cwd=self.dir
        )
        wait_until(
            self._ready, what="Firebase Emulator Suite", timeout=180, proc=self.child.proc, log=self.child.log
        )

    def _ready(self) -> bool:
        return "All emulators ready" in self.child.log.read_text(errors="replace")

    def url(self, function: str) -> str:
        return f"http://127.0.0.1:{self.functions_port}/{self.project}/{REGION}/{function}"

    def sign_up(self, email: str, password: str) -> tuple[str, str]:
        """Create an account on the suite's Auth emulator; returns (uid, ID token)."""
        url = f"http://{self.auth_host}/identitytoolkit.googleapis.com/v1/accounts:signUp?key=local-emulator"
        body = json.dumps({"email": email, "password": password, "returnSecureToken": True}).encode()
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as response:
            data = json.loads(response.read())
        return str(data["localId"]), str(data["idToken"])

    def stop(self) -> None:
        self.child.stop(grace=20)
        shutil.rmtree(self.dir, ignore_errors=True)
