"""What `firebase deploy` uploads for the functions: the code and the locked requirements, nothing else.

The Firebase CLI zips the functions source folder (this checkout, `firebase.json` "source": ".")
minus the `ignore` globs of firebase.json. This test runs the CLI's own packaging function
(firebase-tools, `prepareFunctionsUpload`) on a copy of the checkout that also holds what a
developer's folder holds (a virtualenv, node_modules, env files with secrets, emulator logs,
`.firebase/`, a service-account key, stale bytecode caches), first runs firebase.json's predeploy
hooks as `firebase deploy` does (firebase-tools' `lifecycleHooks`; ours compiles the bytecode, see
tools/bytecode.py), and reads the zip it would upload: the code, its requirements and one
checked-hash pyc per module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

# slow: an emulator of its own to start, or a deploy to pack (`scripts/test --fast` skips them).
pytestmark = [pytest.mark.no_emulator, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
FIREBASE_TOOLS = ROOT / "tools" / "firebase" / "node_modules" / "firebase-tools"
DEPLOY_UNTIL_UPLOAD = """
const [source] = process.argv.slice(1);
const lib = process.env.FIREBASE_TOOLS + "/lib";
const { Config } = require(lib + "/config");
const { lifecycleHooks } = require(lib + "/deploy/lifecycleHooks");
const { prepareFunctionsUpload } = require(lib + "/deploy/functions/prepareFunctionsUpload");
const config = Config.load({ cwd: source, projectDir: source });
const options = { config, cwd: source, projectRoot: source, project: "demo-credits-upload" };
lifecycleHooks("functions", "predeploy")({}, options)
  .then(() => prepareFunctionsUpload(source, source, config.get("functions")[0], [], undefined))
  .then(
    (result) => console.log("ZIP=" + result.pathToSource),
    (error) => { console.error(error); process.exit(1); },
  );
"""
# What a working folder holds beyond the repository: none of it may be uploaded.
LOCAL_FILES = {
    ".env": "STRIPE_SECRET_KEY=sk_live_leak",
    ".env.acme-credits-prod": "ALLOWED_ORIGINS=https://app.example.com",
    ".env.local": "GEMINI_API_KEY=leak",
    ".secret.local": "STRIPE_WEBHOOK_SECRET=whsec_leak",
    "service-account.json": '{"type": "service_account", "private_key": "leak"}',
    "functions/lib/stray-key.pem": "-----BEGIN PRIVATE KEY-----",
    "firebase-debug.log": "log",
    "firestore-debug.log": "log",
    "functions/lib/debug.log": "log",
    ".firebase/hosting.cache": "cache",
    ".venv/lib/python3.11/site-packages/x.py": "x = 1",
    "node_modules/x/index.js": "x",
    "tools/firebase/node_modules/firebase-tools/x.js": "x",
    "functions/__pycache__/http.cpython-311.pyc": "pyc of a module that is gone",
    "functions/lib/__pycache__/db.cpython-312.pyc": "pyc of another Python",
    ".pytest_cache/v/cache/lastfailed": "{}",
    ".hypothesis/examples/x": "x",
    ".mypy_cache/x.json": "{}",
}


def tracked() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_a_deploy_uploads_the_functions_code_and_the_locked_requirements_only(tmp_path: Path) -> None:
    assert FIREBASE_TOOLS.is_dir(), "run scripts/setup (firebase-tools in tools/firebase)"
    source = tmp_path / "checkout"
    for name in tracked():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    for name, text in LOCAL_FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    # `venv` is where the Firebase CLI, and our predeploy hook, find the functions' Python.
    (source / "venv").symlink_to(ROOT / ".venv")
    [functions] = json.loads((ROOT / "firebase.json").read_text())["functions"]
    assert [f"--runtime {functions['runtime']}" in hook for hook in functions["predeploy"]] == [True]

    res = subprocess.run(
        ["node", "-e", DEPLOY_UNTIL_UPLOAD, str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "FIREBASE_TOOLS": str(FIREBASE_TOOLS)},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    zip_path = Path(res.stdout.split("ZIP=")[1].strip())
    with zipfile.ZipFile(zip_path) as upload:
        uploaded = set(upload.namelist())
    zip_path.unlink()

    code = {name for name in tracked() if name.startswith("functions/") and name.endswith(".py")}
    bytecode = {
        Path(importlib.util.cache_from_source(name)).relative_to(source).as_posix()
        for name in (str(source / module) for module in ["main.py", *code])
    }
    expected = {"main.py", "requirements.txt", *code, *bytecode}
    assert uploaded == expected, {"unexpected": uploaded - expected, "missing": expected - uploaded}
