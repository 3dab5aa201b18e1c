"""Warm up a feature store from history before a model version takes traffic.

``backfill(spec, history, store_url)`` reads past transactions (a Parquet file or
folder with the columns the aggregates need), builds every entity value's online
state in one vectorised pass (:func:`pipelines.features_online.states_from_history`)
and merges it into the store's namespace for the spec's feature definitions
(:mod:`serving.feature_store`): events a state lacks are added by transaction id, so
a backfill next to live traffic (the champion's transformer writing the same
namespace) loses nothing and counts nothing twice. It then writes the namespace's
warm-up record, which the transformer requires before it becomes ready.

Only Redis is backfilled from here: the in-process store lives inside the
transformer, which warms it up itself (``--history``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipelines.errors import ConfigError
from pipelines.feature_history import read_history, states_from_history
from pipelines.features_online import OnlineFeatures
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class BackfillResult:
    """What a backfill wrote."""

    spec: str
    namespace: str
    history: str
    rows: int
    states: int  # entity values in the history (after eviction: with events to keep)
    written: int  # states that changed in the store
    history_until: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _progress(items: Iterable[T], total: int, show: bool) -> Iterator[T]:
    if not show:
        yield from items
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("merging entity states", total=total)
        for item in items:
            yield item
            bar.advance(task)


def backfill(
    spec: ModelSpec,
    history: Path,
    store_url: str,
    *,
    prefix: str | None = None,
    secret: bytes | None = None,
    progress: bool = False,
) -> BackfillResult:
    """Merge the history's states into ``store_url`` and mark the namespace warm."""
    from serving.feature_store import open_store
    from serving.feature_store_keys import PREFIX

    if store_url in ("", "memory"):
        raise ConfigError(
            "the in-process feature store lives inside the transformer: start it with "
            "--history PATH to warm it up; backfill a redis:// store"
        )
    online = OnlineFeatures(spec)
    store = open_store(online, store_url, secret=secret, prefix=prefix or PREFIX)
    try:
        store.ping()  # type: ignore[attr-defined]
        started = time.perf_counter()
        frame = read_history(spec, Path(history), online.needed_columns)
        until = frame[online.time_column].max() if len(frame) else None
        values = sum(int(frame[e.entity].nunique()) for e in online.entities)
        log.info("backfill %s: %d rows, %d entity values", spec.name, len(frame), values)
        merged = store.merge(_progress(states_from_history(online, frame), values, progress))
        result = BackfillResult(
            spec=spec.name,
            namespace=store.keys.namespace,
            history=str(history),
            rows=len(frame),
            states=merged.states,
            written=merged.written,
            history_until=None if until is None else until.isoformat(),
            seconds=round(time.perf_counter() - started, 3),
        )
        store.mark_warm(
            {
                **result.to_dict(),
                "fingerprint": online.fingerprint,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
        return result
    finally:
        store.close()


def warm_record(spec: ModelSpec, store_url: str, *, prefix: str | None = None) -> dict | None:
    """The namespace's warm-up record (None: never backfilled)."""
    from serving.feature_store import open_store
    from serving.feature_store_keys import PREFIX

    store = open_store(OnlineFeatures(spec), store_url, prefix=prefix or PREFIX)
    try:
        return store.warm_record()
    finally:
        store.close()
