"""Signed checkpoints of the audit chain, kept where the database's writer cannot rewrite them.

A checkpoint says "the chain of store S held ``events`` events, the newest at ``seq``
with ``hash``, at time T", authenticated with the audit key (HMAC-SHA-256, key id
inside). ``registry.audit_verify`` compares the chain with the newest checkpoint of
each sink: events deleted from the end after a checkpoint (a truncation) and events
rewritten before it are named by sequence number.

Sinks (``GOVML_AUDIT_CHECKPOINTS``, comma-separated; default: the file sink):

* ``file:PATH`` (or a plain path): an append-only JSON-lines file, mode 0600. The
  embedded default is ``<store folder>/audit/checkpoints-<store id>.jsonl``
  (``$GOVML_VAR_DIR/audit/`` for the embedded stack), outside the database.
* ``s3://BUCKET/PREFIX``: one object per checkpoint in a bucket with S3 Object Lock,
  written in COMPLIANCE mode with a retention (``?retention_days=N``, default 2557,
  i.e. seven years): nobody, root account included, can delete or overwrite it before
  then. Credentials and endpoint come from boto3's own configuration (``AWS_*``,
  ``AWS_ENDPOINT_URL`` for MinIO and others).
* ``mlflow`` or ``mlflow:TRACKING_URI``: one artifact per checkpoint in the run
  ``audit-checkpoints`` of the experiment ``govml-audit``, readable by reviewers in the
  MLflow UI (the registry's own permissions protect it).

Each sink holds the checkpoints of one store: give each governance store its own
file, prefix or tracking server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import make_url

from pipelines.errors import RegistryError
from registry import audit_keys

log = logging.getLogger(__name__)

SINKS_ENV = "GOVML_AUDIT_CHECKPOINTS"
MAC_CONTEXT = "govml-checkpoint-v1\n"
FORMAT_VERSION = 1
DEFAULT_RETENTION_DAYS = 2557
MLFLOW_EXPERIMENT = "govml-audit"
MLFLOW_RUN = "audit-checkpoints"


class CheckpointError(RegistryError):
    """A checkpoint could not be written or read."""


@dataclass(frozen=True)
class Checkpoint:
    """One signed statement about the chain's head."""

    store: str
    chain_id: str
    seq: int
    hash: str
    events: int
    at: str
    key_id: str
    mac: str
    version: int = FORMAT_VERSION

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("mac")
        return data

    def message(self) -> str:
        return MAC_CONTEXT + json.dumps(self.body(), sort_keys=True, separators=(",", ":"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def sign(
    ring: audit_keys.Keyring, store: str, chain_id: str, seq: int, digest: str, events: int
) -> Checkpoint:
    at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    draft = Checkpoint(store, chain_id, seq, digest, events, at, ring.active, "")
    tag = audit_keys.mac(ring.keys[ring.active], draft.message())
    return Checkpoint(store, chain_id, seq, digest, events, at, ring.active, tag)


def parse(text: str, where: str) -> Checkpoint:
    try:
        data = json.loads(text)
        return Checkpoint(
            store=str(data["store"]),
            chain_id=str(data["chain_id"]),
            seq=int(data["seq"]),
            hash=str(data["hash"]),
            events=int(data["events"]),
            at=str(data["at"]),
            key_id=str(data["key_id"]),
            mac=str(data["mac"]),
            version=int(data.get("version", FORMAT_VERSION)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"unreadable checkpoint in {where}: {exc}") from None


def store_id(governance_url: str) -> str:
    """A short, stable name of a governance store (its URL without password)."""
    parsed = make_url(governance_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        ident = "sqlite:" + str(Path(parsed.database).expanduser().resolve())
    else:
        ident = parsed.set(password=None).render_as_string(hide_password=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- sinks
class Sink(Protocol):
    name: str

    def write(self, checkpoint: Checkpoint) -> None: ...

    def latest(self) -> Checkpoint | None: ...


class FileSink:
    """An append-only JSON-lines file (O_APPEND, fsync, 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file:{path}"

    def write(self, checkpoint: Checkpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (checkpoint.to_json() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def all(self) -> list[Checkpoint]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CheckpointError(f"cannot read {self.path}: {exc.strerror}") from None
        return [parse(line, f"{self.path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]

    def latest(self) -> Checkpoint | None:
        found = self.all()
        return max(found, key=lambda c: c.seq) if found else None


def _object_key(prefix: str, checkpoint: Checkpoint) -> str:
    # zero-padded: the lexically greatest key is the newest checkpoint
    return f"{prefix}{checkpoint.seq:012d}-{checkpoint.hash[:16]}.json"


class S3Sink:
    """One object per checkpoint, locked in COMPLIANCE mode until its retention ends."""

    def __init__(self, bucket: str, prefix: str, retention_days: int) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.retention_days = retention_days
        self.name = f"s3://{bucket}/{self.prefix}"

    def _client(self):  # noqa: ANN202 (boto3 is imported only when a bucket is configured)
        import boto3

        return boto3.client("s3")

    def write(self, checkpoint: Checkpoint) -> None:
        import base64

        body = checkpoint.to_json().encode()
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.retention_days)
        try:
            self._client().put_object(
                Bucket=self.bucket,
                Key=_object_key(self.prefix, checkpoint),
                Body=body,
                ContentType="application/json",
                ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=until,
            )
        except Exception as exc:  # noqa: BLE001 (botocore's errors: one line for the operator)
            raise CheckpointError(f"cannot write a checkpoint to {self.name}: {exc}") from None

    def latest(self) -> Checkpoint | None:
        client = self._client()
        newest = None
        try:
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            ):
                for item in page.get("Contents", []):
                    if newest is None or item["Key"] > newest:
                        newest = item["Key"]
            if newest is None:
                return None
            body = client.get_object(Bucket=self.bucket, Key=newest)["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot read checkpoints from {self.name}: {exc}") from None
        return parse(body.decode(), f"{self.name}{newest[len(self.prefix) :]}")


class MlflowSink:
    """One artifact per checkpoint in the MLflow run ``audit-checkpoints``."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.name = f"mlflow:{tracking_uri}"

    def _run_id(self, create: bool) -> str | None:
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        if experiment is None:
            if not create:
                return None
            experiment_id = client.create_experiment(MLFLOW_EXPERIMENT)
        else:
            experiment_id = experiment.experiment_id
        runs = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.runName` = '{MLFLOW_RUN}'", max_results=1
        )
        if runs:
            return runs[0].info.run_id
        if not create:
            return None
        return client.create_run(experiment_id, run_name=MLFLOW_RUN).info.run_id

    def write(self, checkpoint: Checkpoint) -> None:
        from mlflow import MlflowClient

        try:
            run_id = self._run_id(create=True)
            name = _object_key("checkpoints/", checkpoint)
            MlflowClient(self.tracking_uri).log_text(run_id, checkpoint.to_json(), name)
        except Exception as exc:  # noqa: BLE001 (MLflow's errors: one line for the operator)
            raise CheckpointError(f"cannot write a checkpoint to {self.name}: {exc}") from None

    def latest(self) -> Checkpoint | None:
        import tempfile

        from mlflow import MlflowClient

        try:
            run_id = self._run_id(create=False)
            if run_id is None:
                return None
            client = MlflowClient(self.tracking_uri)
            files = client.list_artifacts(run_id, "checkpoints")
            names = sorted(f.path for f in files if not f.is_dir)
            if not names:
                return None
            with tempfile.TemporaryDirectory() as folder:
                text = Path(client.download_artifacts(run_id, names[-1], folder)).read_text()
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot read checkpoints from {self.name}: {exc}") from None
        return parse(text, f"{self.name} {names[-1]}")


def default_file(governance_url: str) -> Path:
    home = audit_keys.store_home(governance_url)
    return home / "audit" / f"checkpoints-{store_id(governance_url)}.jsonl"


def _one_sink(item: str, governance_url: str) -> Sink:
    if item.startswith("s3://"):
        parts = urlsplit(item)
        if not parts.netloc:
            raise CheckpointError(f"{SINKS_ENV}: {item!r} names no bucket")
        query = parse_qs(parts.query)
        try:
            days = int(query.get("retention_days", [DEFAULT_RETENTION_DAYS])[0])
        except ValueError:
            raise CheckpointError(
                f"{SINKS_ENV}: {item!r}: retention_days must be a number"
            ) from None
        if days < 1:
            raise CheckpointError(f"{SINKS_ENV}: {item!r}: retention_days must be at least 1")
        return S3Sink(parts.netloc, parts.path, days)
    if item == "mlflow" or item.startswith("mlflow:"):
        uri = item.partition(":")[2]
        if not uri:
            from pipelines.config import load_settings

            uri = load_settings().mlflow_tracking_uri
        return MlflowSink(uri)
    if item == "file" or item == "default":
        return FileSink(default_file(governance_url))
    path = item[len("file:") :] if item.startswith("file:") else item
    if not path.startswith("/"):
        raise CheckpointError(
            f"{SINKS_ENV}: {item!r} is not a sink (use file:/ABSOLUTE/PATH, s3://BUCKET/PREFIX "
            "or mlflow[:TRACKING_URI])"
        )
    return FileSink(Path(path))


def sinks_for(governance_url: str, spec: str | None = None) -> list[Sink]:
    """The configured checkpoint sinks of a store (``GOVML_AUDIT_CHECKPOINTS``)."""
    if spec is None:
        from pipelines.config import load_settings

        spec = load_settings().audit_checkpoints
    raw = spec
    items = [part.strip() for part in raw.split(",") if part.strip()]
    if not items:
        return [FileSink(default_file(governance_url))]
    return [_one_sink(item, governance_url) for item in items]


# --------------------------------------------------------------------------- checks
def check_mac(checkpoint: Checkpoint, ring: audit_keys.Keyring) -> str | None:
    """None when the checkpoint is authentic; else what is wrong with it."""
    return ring.check(checkpoint.key_id, checkpoint.message(), checkpoint.mac)


def write_all(checkpoint: Checkpoint, sinks: Iterable[Sink]) -> list[str]:
    """Write to every sink; the names written. Raises after trying all if any failed."""
    written, failed = [], []
    for sink in sinks:
        try:
            sink.write(checkpoint)
            written.append(sink.name)
        except CheckpointError as exc:
            log.error("%s", exc)
            failed.append(str(exc))
    if failed:
        raise CheckpointError("; ".join(failed))
    return written


def latest_each(sinks: Iterable[Sink]) -> list[tuple[str, Checkpoint | None, str | None]]:
    """``(sink, newest checkpoint or None, read error or None)`` per sink."""
    out = []
    for sink in sinks:
        try:
            out.append((sink.name, sink.latest(), None))
        except CheckpointError as exc:
            out.append((sink.name, None, str(exc)))
    return out
