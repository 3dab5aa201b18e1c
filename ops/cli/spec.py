"""``govml spec validate|show``: model specs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ops.cli.common import Commands, spec_path
from pipelines.config import Settings
from pipelines.errors import SpecError


def cmd_spec_validate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.spec import discover_specs, load_spec

    paths = [Path(p) for p in args.paths] or list(discover_specs(settings.specs_dir).values())
    if not paths:
        raise SpecError(f"no spec files (*.yaml) in {settings.specs_dir}")
    failures = []
    for path in paths:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            failures.append(str(exc))
            print(f"FAIL {exc}")
            continue
        print(f"ok   {path}: {spec.name} ({spec.use_case}, {len(spec.features.names)} features)")
    if failures:
        raise SpecError(f"{len(failures)} of {len(paths)} spec(s) invalid")
    return 0


def cmd_spec_show(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.spec import load_spec

    spec = load_spec(spec_path(args.spec, settings))
    print(json.dumps(spec.model_dump(mode="json"), indent=2))
    return 0


def add_spec_commands(sub: Commands) -> None:
    verbs = sub.group("spec", "validate and show model specs")
    p = verbs.add("validate", cmd_spec_validate, "validate spec files (default: every spec)")
    p.add_argument("paths", nargs="*", help="spec YAML files (default: specs/*.yaml)")
    p = verbs.add("show", cmd_spec_show, "print a validated spec with defaults filled in")
    p.add_argument("spec", help="spec name (fraud) or path")
