"""``govml data generate|verify``: a spec's data set as Parquet plus its manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from ops.cli.common import Commands, positive_int, spec_path
from pipelines.config import Settings
from pipelines.errors import SpecError


def cmd_data_generate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.datasets import materialise
    from pipelines.spec import discover_specs, load_spec

    names = list(discover_specs(settings.specs_dir)) if args.all else args.specs
    if not names:
        raise SpecError("name at least one spec (fraud, credit, german_credit) or use --all")
    overrides = {k: v for k, v in {"n_rows": args.rows, "seed": args.seed}.items() if v}
    for name in names:
        spec = load_spec(spec_path(name, settings))
        out = Path(args.out) if args.out else settings.data_dir / spec.name
        manifest = materialise(spec, out, overrides)
        print(
            f"{spec.name}: {manifest.rows:,} rows -> {out / manifest.path} "
            f"(sha256 {manifest.sha256[:16]}...)"
        )
    return 0


def cmd_data_verify(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data.manifest import verify_manifest

    for path in args.manifests:
        manifest = verify_manifest(Path(path))
        print(f"ok   {path}: {manifest.rows:,} rows, sha256 {manifest.sha256}")
    return 0


def add_data_commands(sub: Commands) -> None:
    verbs = sub.group("data", "generate and verify data sets")
    p = verbs.add("generate", cmd_data_generate, "write a spec's data set as Parquet + manifest")
    p.add_argument("specs", nargs="*", help="spec names or paths (fraud, credit, german_credit)")
    p.add_argument("--all", action="store_true", help="every spec in the specs folder")
    p.add_argument("--rows", type=positive_int, help="override the number of rows")
    p.add_argument("--seed", type=int, help="override the random seed")
    p.add_argument("--out", help="output folder (default: $GOVML_DATA_DIR/<spec>)")
    p = verbs.add("verify", cmd_data_verify, "check a data set against its manifest")
    p.add_argument("manifests", nargs="+", help="*.manifest.json files")
