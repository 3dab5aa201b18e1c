"""KServe's ``InferenceService`` CRD: where it is found, and every way a manifest breaks its
schema.

``validate_manifest`` checks a manifest against the ``openAPIV3Schema`` of KServe's CRD the
way the API server reads it (see :func:`structural_to_jsonschema`); it needs
``jsonschema``, which only the orchestration environment has, and is imported lazily.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import DeploymentError
from serving.control.checks import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    LABEL_MAX,
    LABEL_VALUE,
    SUBDOMAIN_MAX,
)

CRD_FILE = "serving.kserve.io_inferenceservices.yaml"
CRD_ENV = "GOVML_KSERVE_CRD"
REPO_ROOT = Path(__file__).resolve().parents[2]


def crd_candidates() -> list[Path]:
    """Where the KServe CRD is looked for: $GOVML_KSERVE_CRD, ../shared/kserve, /work/shared."""
    out = []
    configured = os.environ.get(CRD_ENV)
    if configured:
        out.append(Path(configured))
    out.append(REPO_ROOT.parent / "shared" / "kserve" / CRD_FILE)
    out.append(Path("/work/shared/kserve") / CRD_FILE)
    return out


def find_crd() -> Path | None:
    """The first candidate CRD file that exists, else None."""
    return next((path for path in crd_candidates() if path.is_file()), None)


@functools.lru_cache(maxsize=4)
def _load_crd(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=loader)  # noqa: S506 (a safe loader)
    if not isinstance(data, dict) or data.get("kind") != "CustomResourceDefinition":
        raise DeploymentError(f"{path} is not a CustomResourceDefinition")
    return data


def load_crd(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed CRD (cached while the file is unchanged)."""
    stat = Path(path).stat()
    return _load_crd(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def served_schema(crd: Mapping[str, Any], api_version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the served version ``api_version`` (default: storage)."""
    group = crd["spec"]["group"]
    served = [v for v in crd["spec"]["versions"] if v.get("served")]
    if api_version is None:
        chosen = next((v for v in served if v.get("storage")), served[0] if served else None)
    else:
        chosen = next((v for v in served if f"{group}/{v['name']}" == api_version), None)
    if chosen is None:
        offered = [f"{group}/{v['name']}" for v in served]
        raise DeploymentError(f"the CRD serves no {api_version!r}; it serves {offered}")
    return chosen["schema"]["openAPIV3Schema"]


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_KEPT_EXTENSIONS = ("x-kubernetes-list-type", "x-kubernetes-list-map-keys")


def structural_to_jsonschema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as plain JSON Schema, with the API server's semantics.

    - ``x-kubernetes-int-or-string``: ``anyOf: [integer, string]`` (no ``type``);
    - an object schema without ``additionalProperties`` and without
      ``x-kubernetes-preserve-unknown-fields`` is closed: the API server prunes unknown
      fields there (or refuses them under strict field validation, kubectl's default), so
      a misspelt field would silently vanish; here it is an error;
    - a ``required`` property that has a ``default`` is not required (defaulting runs first);
    - ``format: int32/int64`` become ranges; ``nullable: true`` admits null;
    - ``x-kubernetes-list-type: set/map`` are checked for duplicates by the validator;
    - ``x-kubernetes-embedded-resource`` objects admit apiVersion/kind/metadata.
    """
    return _convert(schema)


def _convert_keys(node: Mapping[str, Any]) -> dict[str, Any]:
    """The node's own keywords, sub-schemas converted; extensions left to :func:`_convert`."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = _convert(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_convert(sub) for sub in value]
        elif key == "nullable" or (key.startswith("x-kubernetes-") and key not in _KEPT_EXTENSIONS):
            continue  # handled below
        else:
            out[key] = copy.deepcopy(value)
    return out


def _convert(node: Mapping[str, Any]) -> dict[str, Any]:
    out = _convert_keys(node)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("type") == "object" and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    if "required" in node:
        props = node.get("properties", {})
        required = [r for r in node["required"] if "default" not in props.get(r, {})]
        if required:
            out["required"] = required
        else:
            out.pop("required")
    fmt = node.get("format")
    if node.get("type") == "integer" and fmt in _INT_RANGES:
        low, high = _INT_RANGES[fmt]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    if node.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _object_meta_schema() -> dict[str, Any]:
    """What the API server accepts in a custom resource's ``metadata`` (ObjectMeta)."""
    key = (
        r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
    )
    value = {"type": "string", "maxLength": LABEL_MAX, "pattern": LABEL_VALUE.pattern}
    loose = {}  # server-set fields: accepted, not checked here
    for name in ("uid", "resourceVersion", "generation", "creationTimestamp", "selfLink"):
        loose[name] = {}
    for name in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
        loose[name] = {}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {
                "type": "string",
                "maxLength": SUBDOMAIN_MAX,
                "pattern": DNS1123_SUBDOMAIN.pattern,
            },
            "generateName": {"type": "string"},
            "namespace": {
                "type": "string",
                "maxLength": LABEL_MAX,
                "pattern": DNS1123_LABEL.pattern,
            },
            "labels": {
                "type": "object",
                "additionalProperties": False,
                "patternProperties": {key: value},
            },
            "annotations": {
                "type": "object",
                "additionalProperties": False,
                "patternProperties": {key: {"type": "string"}},
            },
            "finalizers": {"type": "array", "items": {"type": "string"}},
            "ownerReferences": {"type": "array", "items": {"type": "object"}},
            **loose,
        },
    }


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    """``x-kubernetes-list-type``: ``set`` items and ``map`` keys must be unique."""
    from jsonschema.exceptions import ValidationError

    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", []) if list_type == "map" else []
    props = (schema.get("items") or {}).get("properties", {})
    seen: set[str] = set()
    for index, item in enumerate(instance):
        if list_type == "map":
            if not isinstance(item, dict):
                continue
            ident = {k: item.get(k, props.get(k, {}).get("default")) for k in keys}
        else:
            ident = item
        token = json.dumps(ident, sort_keys=True, default=str)
        if token in seen:
            what = f"key {ident}" if list_type == "map" else f"value {item!r}"
            yield ValidationError(f"item {index}: duplicate {what} in a list of type {list_type}")
        seen.add(token)


def _validator_class() -> Any:
    """JSON Schema Draft 4 (OpenAPI v3.0's base) plus Kubernetes list semantics."""
    from jsonschema import Draft4Validator, validators

    return validators.extend(Draft4Validator, {"x-kubernetes-list-type": _list_type})


@functools.lru_cache(maxsize=8)
def _validator(path: str, mtime_ns: int, size: int, api_version: str) -> Any:
    schema = structural_to_jsonschema(served_schema(_load_crd(path, mtime_ns, size), api_version))
    schema.setdefault("properties", {})["metadata"] = _object_meta_schema()
    return _validator_class()(schema)


def validate_manifest(
    manifest: Mapping[str, Any], crd_path: str | os.PathLike[str] | None = None
) -> list[str]:
    """Every way ``manifest`` breaks the CRD's schema, as ``path: problem``; [] when valid.

    ``crd_path`` defaults to :func:`find_crd`. Needs ``jsonschema`` (the .venv environment).
    """
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        raise DeploymentError(
            "validate_manifest needs the jsonschema package (in .venv, not .venv-serving)"
        ) from None
    path = Path(crd_path) if crd_path is not None else find_crd()
    if path is None or not path.is_file():
        tried = [str(p) for p in ([path] if path else crd_candidates())]
        raise DeploymentError(f"KServe CRD not found (looked at {tried}); set {CRD_ENV}")
    crd = load_crd(path)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    api_version = manifest.get("apiVersion")
    problems = []
    if manifest.get("kind") != kind:
        problems.append(f"kind: {manifest.get('kind')!r} is not {kind!r}")
    served = [f"{group}/{v['name']}" for v in crd["spec"]["versions"] if v.get("served")]
    if api_version not in served:
        problems.append(f"apiVersion: {api_version!r} is not one of {served}")
        return problems
    stat = path.stat()
    validator = _validator(str(path.resolve()), stat.st_mtime_ns, stat.st_size, api_version)
    for error in sorted(
        validator.iter_errors(dict(manifest)), key=lambda e: list(map(str, e.path))
    ):
        problems.append(f"{_json_path(error.path)}: {_short(error.message)}")
    return problems


def _json_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."
