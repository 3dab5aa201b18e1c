"""MLflow's backend store used directly: ``mlflow-artifacts:`` URIs resolve to the folder
the tracking server keeps them in, and nowhere outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import RegistryError
from registry.mlflow_local import local_path_of, serve_proxied_artifacts_from


def test_a_proxied_uri_maps_into_the_servers_artifact_folder(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    assert local_path_of("mlflow-artifacts:/2/models/m-1/artifacts", root) == (
        root.resolve() / "2" / "models" / "m-1" / "artifacts"
    )
    assert local_path_of("mlflow-artifacts://host:5000/3/run", root) == root.resolve() / "3/run"
    assert local_path_of("mlflow-artifacts:/", root) == root.resolve()
    with pytest.raises(RegistryError, match="points outside the artifact store"):
        local_path_of("mlflow-artifacts:/2/../../etc/passwd", root)
    with pytest.raises(RegistryError, match="is not an mlflow-artifacts: URI"):
        local_path_of("s3://bucket/2", root)


def test_the_backend_store_reads_and_writes_a_servers_experiment(tmp_path: Path) -> None:
    """An experiment the server made (artifact location ``mlflow-artifacts:/N``) works
    without the server: the artifact lands where the server would put it."""
    import mlflow
    from mlflow import MlflowClient

    root = tmp_path / "artifacts"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("served", artifact_location="mlflow-artifacts:/7")
    run = client.create_run(experiment)
    note = tmp_path / "note.txt"
    note.write_text("champion profile")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        serve_proxied_artifacts_from(root)
        client.log_artifact(run.info.run_id, str(note), "profile")
        stored = root / "7" / run.info.run_id / "artifacts" / "profile" / "note.txt"
        assert stored.read_text() == "champion profile"
        back = client.download_artifacts(run.info.run_id, "profile/note.txt", str(tmp_path))
        assert Path(back).read_text() == "champion profile"
    finally:
        mlflow.set_tracking_uri(previous)
