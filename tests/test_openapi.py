"""openapi.yaml is checked against the handlers: same functions, same methods, every error code
known, and real responses (through functions-framework) valid against the documented schemas."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers import TERMS, bearer, make_user

ROOT = Path(__file__).resolve().parent.parent
SPEC: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
METHODS = ("get", "post", "put", "patch", "delete")


def entry_points() -> set[str]:
    import main

    return {
        name
        for name, fn in vars(main).items()
        if inspect.isfunction(fn)
        and fn.__module__ == "main"
        and getattr(getattr(fn, "__firebase_endpoint__", None), "httpsTrigger", None) is not None
    }


def check(target: str, method: str, res: Any) -> dict[str, Any]:
    """Assert the response's status is documented for the operation and its body matches the schema."""
    responses = SPEC["paths"][f"/{target}"][method]["responses"]
    assert str(res.status_code) in responses, (
        f"{method.upper()} /{target} answered undocumented {res.status_code}"
    )
    documented = responses[str(res.status_code)]
    if "$ref" in documented:
        documented = SPEC["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    schema = {**documented["content"]["application/json"]["schema"], "components": SPEC["components"]}
    body: dict[str, Any] = res.json
    jsonschema.validate(body, schema)
    return body


@pytest.mark.no_emulator
def test_every_entry_point_is_documented_and_nothing_else() -> None:
    assert {p.lstrip("/") for p in SPEC["paths"]} == entry_points()


@pytest.mark.no_emulator
def test_every_error_code_is_in_the_spec() -> None:
    from functions.lib import errors

    codes = {
        cls.code for cls in vars(errors).values() if inspect.isclass(cls) and issubclass(cls, errors.AppError)
    }
    assert codes <= set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["enum"])


@pytest.mark.parametrize("target", sorted(p.lstrip("/") for p in SPEC["paths"]))
def test_documented_methods_are_the_ones_served(app: Any, db: Any, target: str) -> None:
    documented = set(SPEC["paths"][f"/{target}"])
    for method in METHODS:
        res = app(target).open("/", method=method.upper(), headers=bearer("m"), json={})
        if method in documented:
            assert res.status_code != 405, (target, method)
        else:
            assert res.status_code == 405, (target, method)
            check_error = SPEC["components"]["schemas"]["Error"]
            jsonschema.validate(res.json, {**check_error, "components": SPEC["components"]})


def test_generate_consent_credits_responses_match_the_spec(app: Any, db: Any) -> None:
    make_user(db, "olga", credits=60, consent=False)
    gen = app("generate")

    check("generate", "post", gen.post("/", json={"prompt": "x"}))  # 401
    check("generate", "post", gen.post("/", json={"prompt": "x"}, headers=bearer("olga")))  # 403
    check("consent", "get", app("consent").get("/", headers=bearer("olga")))
    check("consent", "post", app("consent").post("/", json={"version": "old"}, headers=bearer("olga")))  # 400
    check("consent", "post", app("consent").post("/", json={"version": TERMS}, headers=bearer("olga")))
    ok = check("generate", "post", gen.post("/", json={"prompt": "x"}, headers=bearer("olga")))
    check(
        "generate",
        "post",
        gen.post("/", json={"prompt": "y", "projectId": ok["projectId"]}, headers=bearer("olga")),
    )  # 402
    check("generate", "post", gen.post("/", json={"prompt": 1}, headers=bearer("olga")))  # 400
    check(
        "generate",
        "post",
        gen.post("/", data="x" * 70000, headers=bearer("olga"), content_type="application/json"),
    )  # 413
    credits = check("credits", "get", app("credits").get("/", headers=bearer("olga")))
    assert credits["balance"] == 10


def test_generation_failure_matches_the_spec(app: Any, db: Any, gemini: Any) -> None:
    make_user(db, "pia", credits=50)
    gemini.mode = "error500"

    body = check("generate", "post", app("generate").post("/", json={"prompt": "x"}, headers=bearer("pia")))

    assert body["refunded"] == 50
