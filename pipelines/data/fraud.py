"""Synthetic card-transaction data with labelled fraud scenarios and drift knobs.

The generator is fully vectorised with numpy and seeded, so the same
:class:`FraudConfig` always gives the same rows and a byte-identical Parquet file.

How the data is built:

* A *world* (customers, cards, terminals) is drawn once from the seed. Customers and
  physical terminals live on a 1000 x 1000 km map around a few cities; a customer's
  region is the region of their home. Each customer has 1-3 cards, a spending level,
  an online propensity and about ten usual terminals near home.
* Legitimate transactions are drawn hour by hour. The number per hour follows daily
  and weekly seasonality (quiet nights, busier weekdays and Friday/Saturday
  evenings). Each hour has its own random stream, so the rows do not depend on the
  chunk size used to write them.
* Fraud is planned for the whole period up front (it is a small share of the rows)
  from four scenarios, then merged into the hours it falls in:

  - ``card_testing``: a stolen card makes a burst of 8-40 tiny online payments at one
    or two merchants within minutes;
  - ``account_takeover``: over 1-4 days a customer's card is used mostly online from
    far away, or at terminals far from home, for amounts several times their usual;
  - ``compromised_terminal``: for a window of 3-10 days part of the cards that use
    one terminal are used fraudulently there;
  - ``new_pattern`` (only with ``new_fraud_pattern``): high-value night-time online
    payments at crypto/quasi-cash merchants (MCC 6051) that look like the
    customer's own device (no distance signal), a scenario older models never saw.

* Each fraud dispute (a burst, a takeover, a card at a compromised terminal) gets a
  chargeback at its last transaction plus a lognormal delay (median 10 days, clipped
  to 1-90 days); legitimate rows have no chargeback.

Drift knobs (for monitoring tests and demos): ``amount_shift`` scales legitimate
amounts by ``1 + amount_shift`` (only for customers living in ``amount_shift_region``
when that is set); ``new_merchant_segment`` sends part of online spend to BNPL
merchants; ``new_fraud_pattern`` adds the scenario above. With ``drift_from_day`` the
knobs act from that day on only, so one data set holds a clean period and a drifted one
drawn from the same world.

Category columns have fixed category lists (including ``bnpl`` and ``new_pattern``)
whatever the knobs, so every fraud data set has the same schema and drift shows up
in the values only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.fraud_config import (
    AGE_BANDS,
    CHANNELS,
    MCCS,
    REGIONS,
    SCENARIOS,
    SECONDS_PER_DAY,
    SEGMENTS,
    STREAM_PLAN,
    FraudConfig,
    stream_rng,
)
from pipelines.data.fraud_legit import Rows, hour_weights, legit_hour
from pipelines.data.fraud_scenarios import plan_fraud
from pipelines.data.fraud_world import World, build_world
from pipelines.data.manifest import Manifest, write_parquet_with_manifest
from pipelines.errors import DataValidationError

log = logging.getLogger(__name__)

DATASET_NAME = "fraud_transactions"
GENERATOR = "pipelines.data.fraud.generate_fraud"


COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "tx_time",
    "customer_id",
    "card_id",
    "terminal_id",
    "mcc",
    "merchant_segment",
    "channel",
    "amount",
    "distance_from_home_km",
    "region",
    "customer_tenure_days",
    "customer_age_band",
    "is_fraud",
    "fraud_scenario",
    "chargeback_time",
)

FRAUD_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mcc": MCCS,
    "merchant_segment": SEGMENTS,
    "channel": CHANNELS,
    "region": REGIONS,
    "customer_age_band": AGE_BANDS,
    "fraud_scenario": SCENARIOS,
}


def _dict_type() -> pa.DataType:
    return pa.dictionary(pa.int8(), pa.string())


FRAUD_SCHEMA: pa.Schema = pa.schema(
    [
        ("transaction_id", pa.int64()),
        ("tx_time", pa.timestamp("ns")),
        ("customer_id", pa.int64()),
        ("card_id", pa.int64()),
        ("terminal_id", pa.int64()),
        ("mcc", _dict_type()),
        ("merchant_segment", _dict_type()),
        ("channel", _dict_type()),
        ("amount", pa.float64()),
        ("distance_from_home_km", pa.float64()),
        ("region", _dict_type()),
        ("customer_tenure_days", pa.int32()),
        ("customer_age_band", _dict_type()),
        ("is_fraud", pa.int8()),
        ("fraud_scenario", _dict_type()),
        ("chargeback_time", pa.timestamp("ns")),
    ]
)

_NS = 1_000_000_000


# ----------------------------------------------------------------------------- output


def _dictionary(codes: np.ndarray, column: str) -> pa.Array:
    return pa.DictionaryArray.from_arrays(
        pa.array(codes.astype(np.int8, copy=False)), pa.array(list(FRAUD_CATEGORIES[column]))
    )


def _to_table(world: World, rows: Rows, first_id: int, start_ns: int) -> pa.Table:
    n = len(rows)
    tx_ns = start_ns + rows.sec * _NS
    has_cb = rows.chargeback >= 0
    cb_ns = np.where(has_cb, start_ns + rows.chargeback * _NS, 0)
    arrays = {
        "transaction_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "tx_time": pa.array(tx_ns, type=pa.timestamp("ns")),
        "customer_id": pa.array(rows.cust.astype(np.int64) + 1),
        "card_id": pa.array(rows.card.astype(np.int64)),
        "terminal_id": pa.array(rows.term.astype(np.int64) + 1),
        "mcc": _dictionary(world.term_mcc[rows.term], "mcc"),
        "merchant_segment": _dictionary(world.term_seg[rows.term], "merchant_segment"),
        "channel": _dictionary(rows.online.astype(np.int8), "channel"),
        "amount": pa.array(rows.amount.astype(np.float64)),
        "distance_from_home_km": pa.array(rows.dist.astype(np.float64)),
        "region": _dictionary(world.region[rows.cust], "region"),
        "customer_tenure_days": pa.array(
            (world.tenure0[rows.cust] + rows.sec // SECONDS_PER_DAY).astype(np.int32)
        ),
        "customer_age_band": _dictionary(world.age_band[rows.cust], "customer_age_band"),
        "is_fraud": pa.array((rows.scenario > 0).astype(np.int8)),
        "fraud_scenario": _dictionary(rows.scenario, "fraud_scenario"),
        "chargeback_time": pa.array(cb_ns, type=pa.timestamp("ns"), mask=~has_cb),
    }
    return pa.Table.from_arrays(list(arrays.values()), schema=FRAUD_SCHEMA)


def _check_chunk_rows(chunk_rows: Any) -> None:
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise DataValidationError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")


def iter_fraud_tables(cfg: FraudConfig, chunk_rows: int = 1_000_000) -> Iterator[pa.Table]:
    """Yield the data set as Arrow tables of whole hours, each about ``chunk_rows`` rows.

    The rows (and their order) do not depend on ``chunk_rows``.
    """
    _check_chunk_rows(chunk_rows)
    return _iter_tables(cfg, chunk_rows)


def _iter_tables(cfg: FraudConfig, chunk_rows: int) -> Iterator[pa.Table]:
    world = build_world(cfg)
    fraud = plan_fraud(cfg, world)
    weights = hour_weights(cfg)
    per_hour = stream_rng(cfg, STREAM_PLAN).multinomial(
        cfg.n_rows - len(fraud), weights / weights.sum()
    )
    fraud_hour_bounds = np.searchsorted(fraud.sec, np.arange(weights.shape[0] + 1) * 3600)
    start_ns = int(np.datetime64(cfg.start, "ns").astype(np.int64))
    log.info(
        "generating %d transactions (%d fraud) for %d customers, %d terminals",
        cfg.n_rows,
        len(fraud),
        world.n_customers,
        world.n_phys + world.n_online,
    )
    next_id = 1
    pending: list[Rows] = []
    pending_rows = 0
    for hour in range(weights.shape[0]):
        lo, hi = fraud_hour_bounds[hour], fraud_hour_bounds[hour + 1]
        legit = legit_hour(cfg, world, hour, int(per_hour[hour]))
        block = Rows.concat([legit, fraud.take(slice(lo, hi))])
        block = block.take(np.argsort(block.sec, kind="stable"))
        pending.append(block)
        pending_rows += len(block)
        if pending_rows >= chunk_rows or hour == weights.shape[0] - 1:
            rows = Rows.concat(pending)
            yield _to_table(world, rows, next_id, start_ns)
            next_id += len(rows)
            pending, pending_rows = [], 0


def generate_fraud(cfg: FraudConfig) -> pd.DataFrame:
    """The whole data set in memory (columns :data:`COLUMNS`, sorted by ``tx_time``)."""
    table = pa.concat_tables(iter_fraud_tables(cfg, chunk_rows=max(cfg.n_rows, 1)))
    return table.to_pandas()


def write_fraud(
    cfg: FraudConfig,
    out_dir: str | os.PathLike[str],
    chunk_rows: int = 1_000_000,
    name: str = DATASET_NAME,
) -> Manifest:
    """Write ``<out_dir>/<name>.parquet`` in row groups of ``chunk_rows`` plus its manifest.

    At most about two chunks are in memory at once; the manifest params are the
    resolved config plus ``chunk_rows`` (the row-group size, which the bytes depend on).
    """
    _check_chunk_rows(chunk_rows)
    params = {**cfg.to_params(), "chunk_rows": chunk_rows}
    return write_parquet_with_manifest(
        iter_fraud_tables(cfg, chunk_rows=chunk_rows),
        out_dir,
        name,
        params,
        generator=GENERATOR,
        row_group_rows=chunk_rows,
    )
