"""docs/CONFIGURATION.md's table of settings, made from their declarations (`SETTINGS` in
functions/lib/config.py): one row a setting, in their order, with its default and meaning.

    python -m tools.config_table           # rewrite the table between the page's two markers
    python -m tools.config_table --check   # exit 1 when the page's table is not what it would write

tests/test_config_docs.py fails when the page differs from what this writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from functions.lib.config import SETTINGS, Setting

PAGE = Path(__file__).resolve().parent.parent / "docs" / "CONFIGURATION.md"
BEGIN = (
    "<!-- settings table: made from SETTINGS in functions/lib/config.py by `python -m tools.config_table` -->"
)
END = "<!-- end of the settings table -->"


def shown(setting: Setting[Any]) -> str:
    """The table's default: the declaration's own words, else its value as a person writes it."""
    value = setting.default
    if setting.shown:
        return setting.shown
    if value is None:
        return "unset"
    if isinstance(value, bool):
        raise ValueError(f"{setting.name}: say how its default is written (shown=...)")
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if not value:
        return "none"
    raise ValueError(f"{setting.name}: say how its default is written (shown=...)")


def table() -> str:
    rows = [f"| `{s.name}` | {shown(s)} | {s.meaning} |" for s in SETTINGS]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


def rewrite(page: str) -> str:
    """`page` with the text between the markers replaced by the table."""
    before, begin, rest = page.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{PAGE.name}: the table's markers are missing ({BEGIN!r} ... {END!r})")
    # Blank lines around the table: a line right after a table's last row would be read as a row.
    return f"{before}{BEGIN}\n\n{table()}\n\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the table differs")
    args = parser.parse_args(argv)
    page = PAGE.read_text()
    made = rewrite(page)
    if made == page:
        return 0
    if args.check:
        print(f"{PAGE}: the settings table differs from SETTINGS (run python -m tools.config_table)")
        return 1
    PAGE.write_text(made)
    print(f"{PAGE}: settings table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
