"""Precompiled bytecode for the functions' own code, so a cold start loads `.pyc` files instead of
compiling every module from source.

    python -m tools.bytecode [--clean] [--runtime python311] [PATH ...]   # default: main.py functions

Python writes bytecode beside the source only when it may (not under PYTHONDONTWRITEBYTECODE=1, set
on these machines, nor in a read-only folder), and each process that cannot find it compiles the
source again: about 15 ms of every cold start for `generate`'s modules here (docs/DEPLOY.md,
"Bytecode, for cold starts").
The files are `checked-hash` pycs: valid after any copy or upload because they carry a hash of their
source instead of its modification time, and never run stale, because Python compares that hash
with the source before using one (an edited module is compiled as if no pyc existed).

scripts/setup compiles the working tree. `firebase deploy` runs firebase.json's predeploy hook,
which compiles `main.py` and `functions/` with `--clean` (old caches removed first, so only this
Python's files are uploaded) and `--runtime` (nothing is compiled when the virtualenv's Python is
not the deployed runtime's version, whose interpreter would ignore the files).
"""

from __future__ import annotations

import argparse
import compileall
import py_compile
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_CODE = ("main.py", "functions")


def runtime_of_this_python() -> str:
    """This interpreter as Cloud Functions names a runtime, e.g. `python311`."""
    return f"python{sys.version_info.major}{sys.version_info.minor}"


def clean(paths: Sequence[Path]) -> None:
    """Remove the bytecode caches under `paths` (a file's cache is its folder's `__pycache__`)."""
    for path in paths:
        if path.is_dir():
            for cache in list(path.rglob("__pycache__")):
                shutil.rmtree(cache, ignore_errors=True)
        else:
            for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
                pyc.unlink()


def compile_sources(paths: Sequence[Path]) -> bool:
    """Write a checked-hash pyc for every module under `paths`; False when one does not compile."""
    ok = True
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    for path in paths:
        if path.is_dir():
            ok &= bool(compileall.compile_dir(path, quiet=1, invalidation_mode=mode))
        else:
            ok &= bool(compileall.compile_file(path, quiet=1, invalidation_mode=mode))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths",
        nargs="*",
        default=list(FUNCTIONS_CODE),
        help="files and folders (default: main.py functions)",
    )
    parser.add_argument("--clean", action="store_true", help="remove the caches under the paths first")
    parser.add_argument("--runtime", help="compile only when this Python is that runtime, e.g. python311")
    args = parser.parse_args(argv)
    paths = [ROOT / p for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    if args.clean:
        clean(paths)
    if args.runtime and args.runtime != runtime_of_this_python():
        print(
            f"bytecode: not compiled: this Python is {runtime_of_this_python()}, the functions run on "
            f"{args.runtime} (its interpreter would ignore these files)"
        )
        return 0
    if not compile_sources(paths):
        print("bytecode: a module does not compile (see above)", file=sys.stderr)
        return 1
    print(f"bytecode: compiled {', '.join(args.paths)} ({runtime_of_this_python()}, checked-hash)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
