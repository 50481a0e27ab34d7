"""Each setting is declared once, in `SETTINGS` (functions/lib/config.py), and docs/CONFIGURATION.md
says what the declarations say: its table is the one `python -m tools.config_table` makes from them,
every variable the code reads is declared (so it has its row) and every declared one is read, each
default is what `settings_from` gives when the variable is unset, and `Settings` holds one typed
attribute a declaration, with no default of its own."""

from __future__ import annotations

import ast
import contextlib
import re
from dataclasses import MISSING, fields
from typing import Any, get_type_hints

import pytest

from functions.lib import config
from functions.lib.config import SETTINGS, Settings, settings_from
from functions.lib.errors import ConfigError
from tests.helpers import ROOT
from tools import config_table

CONFIG = ROOT / "functions" / "lib" / "config.py"
TABLE = ROOT / "docs" / "CONFIGURATION.md"
# Set by the platform, never configured: the page says so in prose, not in the table.
PLATFORM = {"K_SERVICE", "FUNCTION_TARGET", "FUNCTIONS_EMULATOR", "GCLOUD_PROJECT"}
# Settings attributes that no variable sets.
NOT_READ = {"task_queue", "initial_cost", "iteration_cost"}
NAME = re.compile(r"^[A-Z][A-Z0-9_]+$")
BASE = {"GOOGLE_CLOUD_PROJECT": "demo-x"}

pytestmark = pytest.mark.no_emulator


class Recording(dict[str, str]):
    """An environment that notes every variable the code looks up in it."""

    def __init__(self, values: dict[str, str], seen: set[str]) -> None:
        super().__init__(values)
        self.seen = seen

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


def read_by_code() -> set[str]:
    """Every variable config.py looks up: those its functions ask a recording environment for, on
    every path (local, deployed, each function's secrets), and every literal name it passes to
    `.get(...)` or names in a ConfigError, for a path these calls miss."""
    seen: set[str] = set()
    deployed = {**BASE, "K_SERVICE": "generate", "FUNCTION_TARGET": "generate", "GEMINI_API_KEY": "k"}
    settings_from(Recording(BASE, seen))
    for env in (BASE, deployed, {**deployed, "FUNCTIONS_EMULATOR": "true"}, {}):
        with contextlib.suppress(ConfigError):
            config.refuse_unsafe_environment(Recording(env, seen))
    config.generate_timeout_s(Recording({}, seen))
    config.deploy_region(Recording({}, seen))
    config.deploy_project(Recording({}, seen))
    for node in ast.walk(ast.parse(CONFIG.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        named = (isinstance(node.func, ast.Attribute) and node.func.attr == "get") or (
            isinstance(node.func, ast.Name) and node.func.id == "ConfigError"
        )
        if (
            named
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
            and NAME.match(first.value)
        ):
            seen.add(first.value)
    return seen


def table_rows() -> dict[str, str]:
    """{VARIABLE: its default column} from the page's table, in its order."""
    rows = {}
    for line in TABLE.read_text().splitlines():
        match = re.match(r"^\| `([A-Z][A-Z0-9_]+)`[^|]*\| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_the_table_is_the_one_made_from_the_declarations() -> None:
    page = TABLE.read_text()

    assert page == config_table.rewrite(page), (
        "docs/CONFIGURATION.md's settings table differs from SETTINGS: run python -m tools.config_table"
    )
    assert list(table_rows()) == [s.name for s in SETTINGS]


def test_every_variable_the_code_reads_has_a_declaration_and_a_row_and_every_one_is_read() -> None:
    read = read_by_code() - PLATFORM
    declared = {s.name for s in SETTINGS}

    assert len(declared) == len(SETTINGS), "a variable declared twice"
    assert read - declared == set(), "read by config.py but not declared in SETTINGS (so no row in the table)"
    assert set(table_rows()) >= read, "read by config.py but missing from docs/CONFIGURATION.md"
    assert declared - read == set(), "declared in SETTINGS but never read"
    assert set(re.findall(r"`([A-Z_]+)`", TABLE.read_text())) >= PLATFORM


def test_each_default_is_what_an_unset_variable_gives_and_what_the_table_says() -> None:
    unset = settings_from(BASE)
    rows = table_rows()
    checked = 0
    for s in SETTINGS:
        value = getattr(unset, s.attribute)
        if s.name == "GOOGLE_CLOUD_PROJECT":  # required: there is no default
            assert s.shown == "required"
            continue
        if s.name == "CREDIT_PACKS":  # the default catalog, parsed
            value = {p.id: {"credits": p.credits, "price": p.price} for p in value.values()}
        assert value == s.default, f"{s.name}: {s.attribute} is {value!r} when unset, declared {s.default!r}"
        if isinstance(s.default, int | float) and not isinstance(s.default, bool):
            assert float(rows[s.name]) == s.default, f"{s.name}: table {rows[s.name]!r}, declared {s.default}"
            checked += 1
    assert checked >= 30


def test_settings_has_one_typed_attribute_a_declaration_and_no_second_default() -> None:
    attributes = [s.attribute for s in SETTINGS]
    hints = get_type_hints(Settings)
    own = {f.name: f for f in fields(Settings)}

    assert len(set(attributes)) == len(attributes), "two variables fill one attribute"
    assert set(own) == set(attributes) | NOT_READ
    assert [a for a in attributes if own[a].default is not MISSING] == [], "a default written twice"
    # What each simple reader makes of a value is of its attribute's type, and not the default.
    given = {
        "_int": "7",
        "_float": "7.5",
        "_text": "x",
        "_optional": "x",
        "_url": "https://h/p",
        "_enforced": "enforce",
    }
    simple = [s for s in SETTINGS if s.read]
    parsed = settings_from({**BASE, **{s.name: given[s.read.__name__] for s in simple}})
    for s in simple:
        value = getattr(parsed, s.attribute)
        assert isinstance(value, hints[s.attribute]) and value != s.default, (s.name, value)


def test_the_special_settings_take_their_defaults_from_the_declarations() -> None:
    """Code of its own reads these, with the declared default (no second copy of it)."""
    assert config.deploy_region({}) == config.DECLARED["FUNCTIONS_REGION"].default
    assert config.stripe_mode_of({}) == config.DECLARED["STRIPE_MODE"].default
    stale = config.DECLARED["STALE_CHARGE_AFTER_S"].default
    assert config.generate_timeout_s({}) == min(config.GENERATE_TIMEOUT_CAP_S, stale - 1)
