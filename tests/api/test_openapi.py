"""docs/openapi.json is valid JSON and describes every route of the app."""

from __future__ import annotations

import json
from pathlib import Path

from node.api.app import ROUTES

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_openapi_lists_every_route_with_its_roles() -> None:
    spec = json.loads((DOCS / "openapi.json").read_text(encoding="utf-8"))
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) == {route.path for route in ROUTES}
    for route in ROUTES:
        operation = spec["paths"][route.path]
        method = route.method.lower()
        assert set(operation) == {method}, route.path
        assert set(operation[method]["x-roles"]) == route.roles, route.path
        for response in operation[method]["responses"].values():
            ref = response.get("$ref")
            if ref:
                name = ref.rsplit("/", 1)[1]
                assert name in spec["components"]["responses"]


def test_api_md_documents_every_route() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for route in ROUTES:
        assert f"`{route.method} {route.path}" in text, route.path
