"""The OpenAPI description of a model endpoint's input: one JSON Schema per feature.

Served by the model server with its routes (:mod:`serving.__main__`) and used by the
feature transformer for its raw transactions (:mod:`serving.transactions`).
"""

from __future__ import annotations

from typing import Any

from serving.feature_values import (
    FeatureInfo,
    FeatureKind,
)
from serving.schema import FeatureSchema

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def field_schema(f: FeatureInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.description:
        out["description"] = f.description
    if f.kind == FeatureKind.CATEGORY:
        out["type"] = ["string", "null"] if f.nullable else "string"
        cats: list[Any] = list(f.categories or ())
        out["enum"] = [*cats, None] if f.nullable else cats
        return out
    base = {
        FeatureKind.FLOAT: "number",
        FeatureKind.INT: "integer",
        FeatureKind.BOOL: "boolean",
    }[f.kind]
    out["type"] = [base, "null"] if f.nullable else base
    if f.kind != FeatureKind.BOOL:
        out["minimum"] = f.lower
        out["maximum"] = f.upper
    return out


def openapi_schema(schema: FeatureSchema) -> dict[str, Any]:
    """JSON Schema (draft 2020-12 / OpenAPI 3.1) of the V1 request ``{"instances": [...]}``.

    Self-contained (no ``$ref``), so it can be embedded in an OpenAPI document as is.
    Numbers without a spec bound carry the float64 limits, as :func:`validate_rows`
    enforces them.
    """
    row = {
        "type": "object",
        "title": f"{schema.model} features",
        "properties": {f.name: field_schema(f) for f in schema.features},
        "required": schema.names,
        "additionalProperties": False,
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"{schema.model} prediction request (KServe V1)",
        "type": "object",
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "maxItems": schema.max_rows,
                "items": row,
            }
        },
        "required": ["instances"],
        "additionalProperties": False,
    }


def document_requests(  # noqa: ANN001
    app, model_name: str, schema, body: dict | None = None, verbs: tuple = ("predict", "explain")
) -> None:
    """Make ``/openapi.json`` describe the real V1 request body of this model.

    KServe's routes take a free-form body; the document gets the feature schema
    (:func:`openapi_schema`) for ``:predict`` and ``:explain``, with
    the model name fixed, and the bearer-token security scheme.
    """
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        document = original()
        request = dict(body) if body is not None else openapi_schema(schema)
        request.pop("$schema", None)
        components = document.setdefault("components", {})
        components.setdefault("schemas", {})[f"{model_name}_request"] = request
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
        }
        for verb in verbs:
            operation = document["paths"].get(f"/v1/models/{{model_name}}:{verb}", {}).get("post")
            if operation is None:
                continue
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model_name}_request"}
                    }
                },
            }
            operation["security"] = [{"bearer": []}]
            for name, code in (("bad input", "400"), ("no or bad token", "401")):
                operation.setdefault("responses", {})[code] = {"description": name}
            operation["responses"]["403"] = {"description": "token without this scope"}
            operation["responses"]["413"] = {"description": "body too large"}
        app.openapi_schema = document
        return document

    app.openapi = openapi
