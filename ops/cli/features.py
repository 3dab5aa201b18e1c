"""``govml features``: the online feature state of a model's transformer.

* ``features backfill MODEL --store redis://HOST:PORT/DB --history PATH``: warm up the
  store's namespace for the model's feature definitions from past transactions,
  before a new version takes traffic (:mod:`ops.feature_backfill`); safe next to live
  traffic. Needs ``GOVML_FEATURE_KEY`` (the transformer's key). Audited
  (``features_backfilled``, ``--as`` the operator).
* ``features status MODEL --store URL``: the namespace and its warm-up record.
"""

from __future__ import annotations

import argparse
import json
import os

from ops.cli.common import Commands, load_model_spec
from pipelines.config import Settings


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    from ops.feature_backfill import backfill

    result = backfill(
        load_model_spec(args.model, settings),
        args.history,
        args.store,
        prefix=args.prefix,
        progress=sys.stderr.isatty(),
    )
    from registry.audit import append_event
    from serving.feature_store import safe_url

    append_event(
        settings.governance_url,
        "features_backfilled",
        actor=args.actor,
        payload={"store": safe_url(args.store), **result.to_dict()},
        model_name=result.spec,
    )
    print(
        f"{result.spec}: {result.states} entity states from {result.rows} rows "
        f"({result.written} written) into {result.namespace} in {result.seconds:.1f} s"
    )
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from ops.feature_backfill import warm_record

    record = warm_record(load_model_spec(args.model, settings), args.store, prefix=args.prefix)
    if record is None:
        print(f"{args.model}: never backfilled in {args.store}")
        return 1
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


def add_features_commands(sub: Commands) -> None:
    verbs = sub.group("features", "online feature state (backfill, status)", metavar=None)

    def store(p: argparse.ArgumentParser) -> None:
        p.add_argument("model")
        p.add_argument("--store", required=True, help="redis://host:port/db")
        p.add_argument("--prefix", default=None, help="key prefix (default govml:features)")

    p = verbs.add("backfill", cmd_backfill, "warm up a store from history before traffic")
    store(p)
    p.add_argument("--history", required=True, help="Parquet file or folder of transactions")
    p.add_argument(
        "--as",
        dest="actor",
        default=os.environ.get("USER") or "operator",
        help="who runs the backfill (audit trail; default $USER)",
    )
    store(verbs.add("status", cmd_status, "a store's namespace and warm-up record"))
