"""Checks shared by every Kubernetes object the control plane renders: names, label and
annotation keys and values, whole numbers, resource quantities; :class:`Problems` collects
every bad input so that one :class:`DeploymentError` names them all.

Governance metadata: labels ``govml/model`` and ``govml/version`` (selectable, also put on
the predictor pods), annotations ``govml/artifact-sha256`` (64 hex characters do not fit a
label value, which Kubernetes caps at 63) and ``govml/approval-request``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal

from pipelines.errors import DeploymentError

LABEL_MODEL = "govml/model"
LABEL_VERSION = "govml/version"
ANNOTATION_SHA256 = "govml/artifact-sha256"
ANNOTATION_APPROVAL = "govml/approval-request"
GOVML_KEYS = (LABEL_MODEL, LABEL_VERSION, ANNOTATION_SHA256, ANNOTATION_APPROVAL)

# Kubernetes name rules (k8s.io/apimachinery/pkg/util/validation).
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253
INT32_MAX = 2**31 - 1

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))([numkMGTPE]|[KMGTPE]i|[eE][+-]?\d+)?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


# --------------------------------------------------------------------------- checks
def parse_quantity(value: str) -> Decimal:
    """A Kubernetes resource quantity (``500m``, ``2Gi``, ``1e3``) as a number."""
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 1, 512Mi, 2Gi)")
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        return number * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    return number.scaleb(int(suffix[1:]))


def name_problem(value: object, rule: str) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if rule == "dns1035":
        ok, max_len = DNS1035_LABEL.match(value), LABEL_MAX
        text = "a DNS-1035 label (lower-case letters, digits and '-', starting with a letter)"
    elif rule == "dns1123-label":
        ok, max_len = DNS1123_LABEL.match(value), LABEL_MAX
        text = "a DNS-1123 label (lower-case letters, digits and '-')"
    else:
        ok, max_len = DNS1123_SUBDOMAIN.match(value), SUBDOMAIN_MAX
        text = "a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')"
    if not ok:
        return f"{value!r} is not {text}"
    if len(value) > max_len:
        return f"{value!r} is {len(value)} characters long; the limit is {max_len}"
    return None


def label_value_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > LABEL_MAX:
        return f"{value!r} is {len(value)} characters long; a label value holds at most 63"
    if not LABEL_VALUE.match(value):
        return f"{value!r} is not a label value (letters, digits, '-', '_', '.'; alphanumeric ends)"
    return None


def _key_problem(key: object) -> str | None:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS-1123 subdomain."""
    if not isinstance(key, str) or not key:
        return "keys must be non-empty strings"
    prefix, _, name = key.rpartition("/")
    if prefix and (name_problem(prefix, "dns1123-subdomain") is not None):
        return f"key {key!r}: prefix {prefix!r} is not a DNS-1123 subdomain"
    if len(name) > LABEL_MAX or not QUALIFIED_NAME.match(name):
        return f"key {key!r}: name part must be 1-63 letters, digits, '-', '_', '.'"
    return None


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Problems:
    """Collects every bad input, then raises once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, field_name: str, problem: str | None) -> None:
        if problem is not None:
            self.items.append(f"{field_name}: {problem}")

    def raise_if_any(self, what: str) -> None:
        if self.items:
            raise DeploymentError(f"cannot render {what}: " + "; ".join(self.items))


def check_int(problems: Problems, name: str, value: object, low: int, high: int) -> bool:
    if not is_int(value):
        problems.add(name, f"must be a whole number, not {value!r}")
        return False
    assert isinstance(value, int)
    if not low <= value <= high:
        problems.add(name, f"{value} is outside {low}..{high}")
        return False
    return True


def check_map(
    problems: Problems, name: str, mapping: Mapping[str, str] | None, labels: bool
) -> None:
    if mapping is None:
        return
    if not isinstance(mapping, Mapping):
        problems.add(name, "must be a mapping of string to string")
        return
    for key, value in mapping.items():
        problems.add(name, _key_problem(key))
        if key in GOVML_KEYS:
            problems.add(name, f"{key!r} is set by the renderer; pass it as its own argument")
        if labels:
            problems.add(f"{name}[{key!r}]", label_value_problem(value))
        elif not isinstance(value, str):
            problems.add(f"{name}[{key!r}]", "annotation values must be strings")
