"""Serve entry points with the real `functions-framework` CLI, one process per target."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from devstack.procs import Child, free_port, http_ok, wait_until

ROOT = Path(__file__).resolve().parent.parent


class ServedFunction:
    """`functions-framework --target NAME --source main.py` on a free port (`source` serves another file, e.g. bench floors)."""

    def __init__(
        self,
        target: str,
        *,
        env: dict[str, str],
        log_dir: Path,
        port: int | None = None,
        wait: bool = True,
        inherit: bool = True,
        source: Path = ROOT / "main.py",
    ) -> None:
        self.target = target
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).parent / "functions-framework"
        argv = [
            str(binary),
            "--target",
            target,
            "--source",
            str(source),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.child = Child(
            argv,
            log=log_dir / f"{target}-{self.port}.log",
            env={**os.environ, **env} if inherit else env,
            cwd=ROOT,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        # Any HTTP answer (405 for GET on a POST-only function) means the server is up.
        wait_until(
            lambda: http_ok(self.url + "/", timeout=2),
            what=f"functions-framework {self.target}",
            timeout=timeout,
            proc=self.child.proc,
            log=self.child.log,
        )

    def kill(self) -> None:
        self.child.kill()

    def stop(self) -> None:
        self.child.stop()
