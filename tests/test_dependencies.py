"""The deployed dependency closure is locked with hashes, and the lock agrees with its input.

`requirements.in` names what the functions import (pinned); `requirements.txt`, the file the
Firebase CLI uploads and Cloud Build installs, is compiled from it by pip-compile with every
transitive package and its sha256 hashes (pip then refuses any file whose hash is not listed).
These checks run offline: they compare the files with each other and with the package metadata
that `scripts/setup` installed from the locks.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.no_emulator
ROOT = Path(__file__).resolve().parent.parent
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (comments, options and hashes skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        match = ENTRY.match(line)
        if match:
            found[canonicalize_name(match[1])] = match[2]
    return found


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a pip-compile lock with hashes."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        match = ENTRY.match(block)
        if match:
            entries[canonicalize_name(match[1])] = (
                match[2],
                re.findall(r"--hash=sha256:([0-9a-f]{64})", block),
            )
    return entries


def closure(top: dict[str, str]) -> dict[str, set[str]]:
    """Every distribution the top-level pins need, with the extras asked of it, from installed metadata."""
    needed: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in top]
    while todo:
        name, extras = todo.pop()
        if name in needed and extras <= needed[name]:
            continue
        needed.setdefault(name, set()).update(extras)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            envs = [{**default_environment(), "extra": extra} for extra in ("", *extras)]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return needed


@pytest.mark.parametrize(
    ("source", "lock"),
    [("requirements.in", "requirements.txt"), ("requirements-dev.in", "requirements-dev.txt")],
)
def test_every_locked_package_is_pinned_with_hashes_and_the_inputs_pins_are_kept(
    source: str, lock: str
) -> None:
    entries = locked(ROOT / lock)

    assert entries and all(hashes for _, hashes in entries.values()), [
        n for n, (_, h) in entries.items() if not h
    ]
    assert {name: entries.get(name, ("missing",))[0] for name in pins(ROOT / source)} == pins(ROOT / source)


def test_the_deployed_lock_is_exactly_the_closure_of_its_input() -> None:
    entries = locked(ROOT / "requirements.txt")

    needed = closure(pins(ROOT / "requirements.in"))

    assert set(needed) == set(entries), {
        "missing from the lock": set(needed) - set(entries),
        "not needed": set(entries) - set(needed),
    }
    for name in needed:
        assert metadata.version(name) == entries[name][0], (
            f"{name}: installed {metadata.version(name)}, locked {entries[name][0]}"
        )


def test_the_dev_lock_installs_the_deployed_packages_at_their_locked_versions_and_hashes() -> None:
    deployed, dev = locked(ROOT / "requirements.txt"), locked(ROOT / "requirements-dev.txt")

    assert {name: dev.get(name) for name in deployed} == deployed
