"""The official Cloud Firestore emulator from the google-cloud-cli, run on this machine's Java."""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from devstack.procs import Child, free_port, wait_until


@functools.cache
def emulator_jar() -> Path:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise RuntimeError(
            "gcloud is not on PATH: install the google-cloud-cli (it ships the Firestore emulator)"
        )
    root = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"], check=True, capture_output=True, text=True
    ).stdout.strip()
    jar = Path(root) / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    if not jar.exists():
        raise RuntimeError(
            f"{jar} is missing: install the component with `gcloud components install cloud-firestore-emulator` or apt's google-cloud-cli-firestore-emulator"
        )
    return jar


class FirestoreEmulator:
    """One emulator process on 127.0.0.1; `clear()` empties it between tests."""

    def __init__(
        self, project: str, *, log_dir: Path, port: int | None = None, rules: Path | None = None
    ) -> None:
        if not project.startswith("demo-"):
            raise ValueError("use a demo- project id with the emulator")
        self.project = project
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        argv = [
            shutil.which("java") or "java",
            "-Xmx512m",
            "-Duser.language=en",
            "-cp",
            str(emulator_jar()),
            "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
            "start",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--project_id={project}",
        ]
        if rules is not None:
            argv.append(f"--rules={rules}")
        self.child = Child(argv, log=log_dir / f"firestore-{self.port}.log")
        wait_until(
            self._ready, what="Firestore emulator", timeout=60, proc=self.child.proc, log=self.child.log
        )
        self._warm_up()

    def _warm_up(self) -> None:
        """One document read through the emulator's data path: a cold JVM can take seconds to answer
        its first real request, which would otherwise land on the first test (or bench) call."""
        url = f"http://{self.host}/v1/projects/{self.project}/databases/(default)/documents/warmup/doc"
        with contextlib.suppress(urllib.error.HTTPError):  # 404: the data path answered
            urllib.request.urlopen(
                urllib.request.Request(url, headers={"Authorization": "Bearer owner"}), timeout=60
            ).close()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as response:
                return bool(response.read().strip() == b"Ok")
        except OSError:
            return False

    def clear(self) -> None:
        url = f"http://{self.host}/emulator/v1/projects/{self.project}/databases/(default)/documents"
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10).close()

    def stop(self) -> None:
        self.child.stop()
