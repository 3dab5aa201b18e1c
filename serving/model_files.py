"""Where the served model's file comes from: a local folder or an MLflow artifact URI."""

from __future__ import annotations

from pathlib import Path

from pipelines import artifacts
from pipelines.artifacts import MODEL_FILES


def find_model_file(folder: Path) -> Path:
    """The LightGBM model file in a folder (searched recursively, MLflow layout too)."""
    found = artifacts.find_model_file(folder)
    if found is None:
        raise FileNotFoundError(f"no LightGBM model file ({', '.join(MODEL_FILES)}) under {folder}")
    return found


def resolve_model_dir(model_uri: str) -> Path:
    """A local folder for a local path or an MLflow artifact URI (downloaded)."""
    local = Path(model_uri)
    if local.exists():
        return local
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
