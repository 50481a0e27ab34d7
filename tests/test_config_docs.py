"""The configuration table (docs/CONFIGURATION.md) and the code that reads the environment
(functions/lib/config.py) say the same: every variable the code reads has its row, every row names a
variable the code reads, and each numeric default is one value in the table, in the parser and on
the `Settings` field it fills."""

from __future__ import annotations

import ast
import re
from dataclasses import MISSING, fields
from typing import Any

import pytest

from tests.helpers import ROOT

CONFIG = ROOT / "functions" / "lib" / "config.py"
TABLE = ROOT / "docs" / "CONFIGURATION.md"
# Set by the platform, never configured: the page says so in prose, not in the table.
PLATFORM = {"K_SERVICE", "FUNCTION_TARGET", "FUNCTIONS_EMULATOR", "GCLOUD_PROJECT"}
NAME = re.compile(r"^[A-Z][A-Z0-9_]+$")

pytestmark = pytest.mark.no_emulator


def _variable(node: ast.AST) -> str | None:
    """The environment variable a literal names, if it is one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.match(node.value):
        return node.value
    return None


def _literal(args: list[ast.expr], i: int) -> Any:
    return args[i].value if len(args) > i and isinstance(args[i], ast.Constant) else None


def read_by_code() -> dict[str, tuple[str | None, Any]]:
    """{VARIABLE: (Settings field it fills or None, literal default or None)} from config.py's AST:
    `field=_int(env, "NAME", default, ...)`, any `_parser(env, "NAME", ...)` and `env.get("NAME")`."""
    found: dict[str, tuple[str | None, Any]] = {}
    for node in ast.walk(ast.parse(CONFIG.read_text())):
        if isinstance(node, ast.keyword) and isinstance(node.value, ast.Call):
            args = node.value.args
            if len(args) >= 2 and (name := _variable(args[1])):
                found[name] = (node.arg, _literal(args, 2))
        if not isinstance(node, ast.Call) or not node.args:
            continue
        is_get = isinstance(node.func, ast.Attribute) and node.func.attr == "get"
        if is_get and (name := _variable(node.args[0])):
            found.setdefault(name, (None, None))
        if isinstance(node.func, ast.Name) and len(node.args) >= 2 and (name := _variable(node.args[1])):
            found.setdefault(name, (None, _literal(node.args, 2)))
    return found


def table_rows() -> dict[str, str]:
    """{VARIABLE: its default column} from the page's table."""
    rows = {}
    for line in TABLE.read_text().splitlines():
        match = re.match(r"^\| `([A-Z][A-Z0-9_]+)`[^|]*\| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_every_variable_the_code_reads_has_a_row_and_every_row_is_read() -> None:
    read = set(read_by_code()) - PLATFORM
    rows = set(table_rows())

    assert read - rows == set(), "read by config.py but missing from docs/CONFIGURATION.md"
    assert rows - read - {"FIREBASE_AUTH_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"} == set(), (
        "in the table but never read"
    )
    assert set(re.findall(r"`([A-Z_]+)`", TABLE.read_text())) >= PLATFORM


def test_each_numeric_default_is_one_value_in_the_table_the_parser_and_the_settings_field() -> None:
    from functions.lib.config import Settings

    defaults = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
    rows = table_rows()
    checked = 0
    for variable, (field_name, default) in read_by_code().items():
        if not isinstance(default, int | float) or isinstance(default, bool):
            continue
        documented = re.sub(r"[`,]", "", rows[variable]).split()[0]
        assert float(documented) == float(default), f"{variable}: table {rows[variable]!r}, parser {default}"
        if field_name in defaults:
            assert defaults[field_name] == default, (
                f"{variable}: Settings.{field_name} = {defaults[field_name]}"
            )
        checked += 1
    assert checked >= 25
