"""`.env` files read as the Firebase CLI reads them for a deploy, so deploy.sh checks the variables
the functions will really get: the CLI accepts `export KEY=`, indented keys, quoted values (over
several lines, with escapes in double quotes) and comments, which a `grep '^KEY='` misses.

    python -m tools.dotenv keys FILE...      # every key the files set, one per line
    python -m tools.dotenv get KEY FILE...   # KEY's value (later files win, as in the CLI), or nothing

The grammar is firebase-tools' (`lib/functions/env.js`: `parse`, `validateKey`), ported rule for
rule; tests/test_deploy.py runs both on the same files. A line the CLI cannot read, or a key it
refuses, fails here (exit 1) naming the file and line, never the line's text (it may hold a secret).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# JavaScript's \s (whitespace and line terminators) and the terminators its multiline $ stops at;
# Python's own \s and $ differ from them.
JS_SPACE = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000\ufeff")
)
LINE_END = "\n\r\u2028\u2029"
S = f"[{re.escape(JS_SPACE)}]*"
LINE_RE = re.compile(
    f"(?:(?<=[{LINE_END}])|\\A)"  # ^ (multiline)
    f"{S}(?:export)?{S}([A-Za-z0-9_./]+){S}=[\\f\\t\\v]*"
    f"({S}'(?:\\\\'|[^'])*'|{S}\"(?:\\\\\"|[^\"])*\"|[^#\\r\\n]*)?"
    f"{S}(?:#[^\\n]*)?"
    f"(?=[{LINE_END}]|\\Z)",  # $ (multiline)
    re.DOTALL,
)
QUOTED_RE = re.compile(r"([\"'])(.*)\1", re.DOTALL)
ESCAPES = {"\\n": "\n", "\\r": "\r", "\\t": "\t", "\\v": "\v", "\\\\": "\\", "\\'": "'", '\\"': '"'}
ESCAPE_RE = re.compile(r"\\[nrtv\\'\"]")
KEY_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
RESERVED_PREFIXES = ("X_GOOGLE_", "FIREBASE_", "EXT_", "KIT_")
RESERVED_PREFIX_ALLOWLIST = ("FIREBASE_SECRET_REF_", "EXT_MIGRATED_SYSTEM_", "EXT_SELECTED_EVENTS")
RESERVED_KEYS = frozenset(
    [
        "FIREBASE_CONFIG",
        "CLOUD_RUNTIME_CONFIG",
        "EVENTARC_CLOUD_EVENT_SOURCE",
        "ENTRY_POINT",
        "GCP_PROJECT",
        "GCLOUD_PROJECT",
        "GOOGLE_CLOUD_PROJECT",
        "FUNCTION_TRIGGER_TYPE",
        "FUNCTION_NAME",
        "FUNCTION_MEMORY_MB",
        "FUNCTION_TIMEOUT_SEC",
        "FUNCTION_IDENTITY",
        "FUNCTION_REGION",
        "FUNCTION_TARGET",
        "FUNCTION_SIGNATURE_TYPE",
        "K_SERVICE",
        "K_REVISION",
        "PORT",
        "K_CONFIGURATION",
    ]
)


@dataclass
class Parsed:
    envs: dict[str, str] = field(default_factory=dict)
    key_lines: dict[str, int] = field(default_factory=dict)  # the line each key was last set on
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, text) unread


def _line_of(data: str, offset: int) -> int:
    return data.count("\n", 0, offset) + 1


def parse(data: str) -> Parsed:
    """What the CLI's `parse` returns: the values, and the lines it could not read."""
    # The CLI replaces only the first CRLF (a non-global replace); the rest stay as they are.
    data = re.sub(r"\r\n?", "\n", data, count=1)
    parsed, end = Parsed(), 0
    gaps = []
    for match in LINE_RE.finditer(data):
        gaps.append((end, data[end : match.start()]))
        end = match.end()
        key, value = match.group(1), (match.group(2) or "").strip(JS_SPACE)
        quoted = QUOTED_RE.fullmatch(value)
        if quoted:
            value = quoted.group(2)
            if quoted.group(1) == '"':
                value = ESCAPE_RE.sub(lambda m: ESCAPES[m.group()], value)
        parsed.envs[key] = value
        parsed.key_lines[key] = _line_of(data, match.start(1))
    gaps.append((end, data[end:]))
    for start, gap in gaps:
        offset = start
        for line in re.split(r"([\r\n]+)", gap):
            text = line.strip(JS_SPACE)
            if text and not text.startswith("#"):
                parsed.bad_lines.append((_line_of(data, offset), text))
            offset += len(line)
    return parsed


def key_problem(key: str) -> str | None:
    """Why the CLI's `validateKey` refuses `key`, or None."""
    if key in RESERVED_KEYS:
        return f"{key} is reserved for the platform"
    if not KEY_RE.fullmatch(key):
        return f"{key} is not a key the CLI accepts (A-Z, 0-9 and _, not starting with a digit)"
    if key.startswith(RESERVED_PREFIXES):
        for allowed in RESERVED_PREFIX_ALLOWLIST:
            if key.startswith(allowed):
                needs_suffix = allowed.endswith("_")
                if (needs_suffix and key != allowed) or (not needs_suffix and key == allowed):
                    return None
                break
        return f"{key} starts with a prefix the CLI reserves ({' '.join(RESERVED_PREFIXES)})"
    return None


def load(paths: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The variables the files give, later files winning, and every problem, naming file and line."""
    envs: dict[str, str] = {}
    problems = []
    for path in paths:
        parsed = parse(Path(path).read_text(encoding="utf-8", errors="replace"))
        problems += [
            f"{path} line {number}: the Firebase CLI cannot read this line (it refuses the whole file)"
            for number, _ in parsed.bad_lines
        ]
        for key, line in parsed.key_lines.items():
            why = key_problem(key)
            if why:
                problems.append(f"{path} line {line}: {why}")
        envs.update(parsed.envs)
    return envs, problems


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 2 and argv[0] == "keys":
        command, key, paths = "keys", "", argv[1:]
    elif len(argv) >= 3 and argv[0] == "get":
        command, key, paths = "get", argv[1], argv[2:]
    else:
        print("usage: python -m tools.dotenv keys FILE... | get KEY FILE...", file=sys.stderr)
        return 2
    envs, problems = load(paths)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if command == "keys":
        print("\n".join(envs))
    elif key in envs:
        print(envs[key])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
