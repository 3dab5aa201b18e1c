"""Data layer: synthetic fraud and credit generators, German Credit, manifests.

Every data set is written as ``<name>.parquet`` with a ``<name>.manifest.json``
(rows, schema, SHA-256, generator and parameters) so later stages can verify it.
"""

from __future__ import annotations

from pipelines.data.credit import CreditConfig, generate_credit, write_credit
from pipelines.data.fraud import generate_fraud, write_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.data.german_credit import (
    GERMAN_CREDIT_COLUMNS,
    load_german_credit,
    write_german_credit,
)
from pipelines.data.manifest import (
    Manifest,
    read_manifest,
    verify_manifest,
    write_parquet_with_manifest,
)

__all__ = [
    "GERMAN_CREDIT_COLUMNS",
    "CreditConfig",
    "FraudConfig",
    "Manifest",
    "generate_credit",
    "generate_fraud",
    "load_german_credit",
    "read_manifest",
    "verify_manifest",
    "write_credit",
    "write_fraud",
    "write_german_credit",
    "write_parquet_with_manifest",
]
