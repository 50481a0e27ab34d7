"""tools/bytecode.py: the pycs a deploy ships and scripts/setup writes are checked-hash ones, so a copy
or an upload keeps them valid and an edited module never runs stale."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import bytecode

pytestmark = pytest.mark.no_emulator
FLAGS_CHECKED_HASH = 0b11  # PEP 552: hash-based, checked against the source


def pyc_flags(module: Path) -> int:
    header = Path(importlib.util.cache_from_source(str(module))).read_bytes()[:8]
    assert header[:4] == importlib.util.MAGIC_NUMBER
    return int.from_bytes(header[4:8], "little")


def run_module(folder: Path, name: str) -> str:
    """Import `name` from `folder` in a fresh interpreter that may not write bytecode itself."""
    return subprocess.run(
        [sys.executable, "-B", "-c", f"import {name}; print({name}.VALUE)"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_compiles_checked_hash_pycs_that_never_run_stale(tmp_path: Path) -> None:
    module = tmp_path / "pkg" / "mod.py"
    module.parent.mkdir()
    (module.parent / "__init__.py").write_text("")
    module.write_text("VALUE = 'first!'\n")

    assert bytecode.compile_sources([tmp_path / "pkg"])
    assert pyc_flags(module) == FLAGS_CHECKED_HASH
    assert run_module(tmp_path, "pkg.mod") == "first!"

    # Edited with the same size and modification time: a timestamp pyc would still run "first!".
    stat = module.stat()
    module.write_text("VALUE = 'edited'\n")
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run_module(tmp_path, "pkg.mod") == "edited"


def test_clean_removes_old_caches_and_a_file_keeps_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    stale = tmp_path / "pkg" / "__pycache__" / "gone.cpython-311.pyc"
    stale.write_text("pyc of a module that is gone")
    (tmp_path / "__pycache__").mkdir()
    main_pyc, other_pyc = (
        tmp_path / "__pycache__" / "main.cpython-312.pyc",
        tmp_path / "__pycache__" / "x.cpython-311.pyc",
    )
    main_pyc.write_text("old")
    other_pyc.write_text("not main's")
    (tmp_path / "main.py").write_text("")

    bytecode.clean([tmp_path / "pkg", tmp_path / "main.py"])

    assert not stale.exists() and not main_pyc.exists() and other_pyc.exists()


def test_another_runtime_compiles_nothing_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    other = "python27"
    assert bytecode.main(["--runtime", other, "main.py"]) == 0
    assert f"functions run on {other}" in capsys.readouterr().out


def test_a_module_that_does_not_compile_fails(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def (\n")
    assert not bytecode.compile_sources([tmp_path / "broken.py"])
