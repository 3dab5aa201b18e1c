"""The feature transformer: raw transactions in, the model's features to the predictor.

A KServe transformer (a ``kserve.Model`` whose ``preprocess`` builds the model input
and forwards it to ``--predictor_host``) in front of the model server
(``python -m serving``)::

    python -m serving.transformer --model_name fraud --spec specs/fraud.yaml \\
        --predictor_host 127.0.0.1:8081 --http_port 8080 \\
        [--feature_store memory | redis://127.0.0.1:6379/0] [--history PATH]

For each transaction of a V1 ``:predict`` request (``{"instances": [{...}]}``, the
fields of :mod:`serving.transactions`), in order:

1. the transaction is checked strictly (bad input: 400 naming the row and the field;
   nothing is recorded);
2. the state of each of its entity values (card, customer, terminal) is read and
   updated atomically in the feature store (:mod:`serving.feature_store`) and the
   spec's aggregates are computed for it exactly as the offline path computes them
   for the same row (:mod:`pipelines.features_online`); a transaction later than the
   spec's ``features.online.allowed_lateness`` is refused with 400 (the transactions
   before it in the request are recorded: a retry is safe, the states recognise
   transaction ids);
3. the model's feature vector (``spec.features.names``: raw features as sent, then the
   aggregates, null for an empty ``mean``/``max``/``std`` window) goes to the
   predictor's V1 ``:predict`` (KServe's ``--predictor_host``, ``--predictor_use_ssl``,
   ``--predictor_request_timeout_seconds``; over :mod:`serving.predictor_client`),
   with the request's ``X-Request-Id`` and the transformer's own bearer token for the
   predictor (``--predictor_token_file``, e.g. the deployment's ``service.token``, or
   ``GOVML_PREDICTOR_TOKEN``; required: the model server answers no one without one).

The answer is the predictor's, plus ``aggregates``: each transaction's computed
aggregates. A predictor that refuses the features gives its 4xx (but a predictor that
refuses the transformer's own token gives 502: the caller did nothing wrong); one that
fails or cannot be reached gives 502/503, as does an unreachable feature store; never a
500 for bad input.

State: ``--feature_store memory`` (the default) keeps it in this process and warms it
up from ``--history`` (a Parquet file of past transactions, e.g. the training data)
while loading; a Redis store must have been warmed up by ``govml features backfill``
(its namespace carries a warm-up record). Without warm state the transformer refuses
to become ready unless ``--allow_cold_start`` (features would then miss history).
Card and customer ids appear in no log line and no key (HMAC, ``GOVML_FEATURE_KEY``).

The ``:predict`` route is answered in the server's ASGI guard (:mod:`serving.http`:
body limit, bearer tokens ``--tokens``, required and watched for changes, request
metrics) without FastAPI's routing; other routes are KServe's. Like the model server it
listens on 127.0.0.1 unless ``--host`` or ``GOVML_SERVING_BIND_HOST`` says otherwise,
and serves no gRPC.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kserve import Model
from kserve.errors import InvalidInput, ServerNotReady
from kserve.protocol.infer_type import InferRequest
from prometheus_client import Counter, Histogram

from pipelines.errors import DataValidationError, GovMLError
from pipelines.feature_history import read_history, states_from_history
from pipelines.feature_state import Status, refused
from pipelines.features_online import OnlineFeatures
from serving.feature_store import FeatureStore, StoreError, open_store
from serving.feature_store_keys import PREFIX
from serving.kserve_server import REFUSED, USAGE, Loaded, refuse, serve_main, server_options
from serving.predictor_client import PredictorClient, PredictorUnavailable
from serving.request_context import current_request_id
from serving.schema import InputError
from serving.transactions import TransactionSchema

log = logging.getLogger(__name__)
TOKEN_ENV = "GOVML_PREDICTOR_TOKEN"

EVENTS = Counter(
    "govml_feature_events_total",
    "Transactions seen by the feature transformer, per entity value, by outcome",
    ["model", "entity", "outcome"],
)
STORE_SECONDS = Histogram(
    "govml_feature_store_seconds",
    "Time to read, compute and write the online features of one transaction",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
)
_AGGREGATES: contextvars.ContextVar[list[dict[str, float | None]] | None] = contextvars.ContextVar(
    "govml_aggregates", default=None
)


class PredictorError(GovMLError):
    """The predictor refused (its 4xx) or failed (502/503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json_value(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class OnlineState:
    """Where a transformer keeps its online feature state and how it fills it at start:
    the store's ``url`` (None: in process) and key ``prefix``, the transaction
    ``history`` it is warmed from, whether it may start cold (``allow_cold_start``)
    without one, and the ``secret`` its keys are hashed with."""

    url: str | None = None
    prefix: str = PREFIX
    history: str | None = None
    allow_cold_start: bool = False
    secret: bytes | None = None


class FeatureTransformer(Model):
    """Builds each transaction's features from the online state; forwards to the model."""

    def __init__(
        self,
        name: str,
        spec_path: str,
        state: OnlineState | None = None,
        predictor_token: str | None = None,
    ) -> None:
        super().__init__(name)
        self.spec_path = spec_path
        self.online_state = state or OnlineState()
        self.history = self.online_state.history
        self.allow_cold_start = self.online_state.allow_cold_start
        self.predictor_token = predictor_token
        self.online_: OnlineFeatures | None = None
        self.schema_: TransactionSchema | None = None
        self.store_: FeatureStore | None = None
        self.raw_: tuple[str, ...] = ()
        self.lateness_ = ""
        self._counters: dict[tuple[str, Status], Any] = {}
        self._store_seconds: Any = None
        self._client: PredictorClient | None = None

    # ------------------------------------------------------------------ start-up
    def load(self) -> bool:
        """Spec, store and warm state; False (never ready) with the reason logged."""
        from pipelines.spec import load_spec

        try:
            spec = load_spec(self.spec_path)
            self.online_ = OnlineFeatures(spec)
            self.schema_ = TransactionSchema(spec, self.online_)
            self.raw_ = tuple(spec.features.raw)
            self.lateness_ = spec.features.online.allowed_lateness
            where = self.online_state
            self.store_ = open_store(
                self.online_, where.url, secret=where.secret, prefix=where.prefix
            )
            if not self._warm_up(spec):
                return False
        except GovMLError as exc:
            log.error("feature transformer %s not started: %s", self.name, exc)
            return False
        self._counters = {
            (e.entity, s): EVENTS.labels(self.name, e.entity, s.value)
            for e in self.online_.entities
            for s in Status
        }
        self._store_seconds = STORE_SECONDS.labels(self.name)
        self.ready = True
        log.info(
            "feature transformer %s ready: %d aggregates over %s, %s store, namespace %s",
            self.name,
            len(self.online_.names),
            ", ".join(e.entity for e in self.online_.entities),
            self.store_.kind,
            self.store_.keys.namespace,
        )
        return True

    def _warm_up(self, spec: Any) -> bool:
        store = self.store_
        assert store is not None and self.online_ is not None
        if store.kind == "redis":
            store.ping()  # type: ignore[attr-defined]
            record = store.warm_record()
            if self.history:
                log.warning("--history is for the in-process store; Redis is warmed by backfill")
            if record is None and not self.allow_cold_start:
                log.error(
                    "feature state %s was never warmed up: run `govml features backfill %s "
                    "--store URL --history PATH` first (or --allow_cold_start)",
                    store.keys.namespace,
                    spec.name,
                )
                return False
            if record is not None:
                log.info("feature state warmed up: %s", record)
            return True
        if not self.history:
            if self.allow_cold_start:
                log.warning("no --history: the features start from empty state")
                return True
            log.error("the in-process feature store needs --history PATH (or --allow_cold_start)")
            return False
        frame = read_history(spec, Path(self.history), self.online_.needed_columns)
        started = time.perf_counter()
        result = store.merge(states_from_history(self.online_, frame))
        store.mark_warm({"history": str(self.history), "rows": len(frame)})
        log.info(
            "warmed up %d entity states from %d rows of %s in %.1f s",
            result.states,
            len(frame),
            self.history,
            time.perf_counter() - started,
        )
        return True

    def stop(self) -> None:
        if self.store_ is not None:
            self.store_.close()
        super().stop()

    # ------------------------------------------------------------------ features
    async def transform(
        self, payload: Any
    ) -> tuple[list[dict[str, Any]], list[dict[str, float | None]]]:
        """The model rows and aggregates of a V1 body; InvalidInput for bad input."""
        online, schema, store = self.online_, self.schema_, self.store_
        assert online is not None and schema is not None and store is not None
        if type(payload) is not dict or "instances" not in payload:
            raise InvalidInput("the body must be a JSON object with 'instances'")
        try:
            transactions = schema.validate(payload["instances"])
        except InputError as exc:
            raise InvalidInput(str(exc)) from None
        rows: list[dict[str, Any]] = []
        aggregates: list[dict[str, float | None]] = []
        for i, tx in enumerate(transactions):
            try:
                pending = online.prepare(tx.values, tx.time_ns, tx.event_id)
            except DataValidationError as exc:
                raise InvalidInput(f"row {i}: {exc}") from None
            started = time.perf_counter()
            seen = await store.observe(pending)
            self._store_seconds.observe(time.perf_counter() - started)
            for p, o in zip(pending, seen, strict=True):
                self._counters[p.entity.entity, o.status].inc()
            if refused(seen):
                late = [p.entity.entity for p, o in zip(pending, seen, strict=True)
                        if o.status == Status.TOO_LATE]  # fmt: skip
                raise InvalidInput(
                    f"row {i}: {schema.time_column}: more than {self.lateness_} behind the "
                    f"newest event of its {', '.join(late)}: too late to score exactly; "
                    "not recorded"
                )
            parts = {p.entity.entity: o.features for p, o in zip(pending, seen, strict=True)}
            values = {k: _json_value(v) for k, v in online.assemble(parts).items()}
            rows.append({**{name: tx.values[name] for name in self.raw_}, **values})
            aggregates.append(values)
        return rows, aggregates

    async def forward(self, rows: list[dict[str, Any]], request_id: str | None) -> dict[str, Any]:
        """The predictor's V1 answer for the model rows; PredictorError otherwise."""
        client = self._predictor()
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        if self.predictor_token:
            headers["Authorization"] = f"Bearer {self.predictor_token}"
        body = orjson.dumps({"instances": rows})
        try:
            status, raw = await client.post(f"/v1/models/{self.name}:predict", body, headers)
        except PredictorUnavailable as exc:
            raise PredictorError(503, f"predictor unavailable: {exc}") from None
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        if status != 200:
            detail = answer.get("error", "") if isinstance(answer, dict) else raw[:200]
            if status in (401, 403):  # the transformer's own credentials, not the caller's
                raise PredictorError(502, f"the predictor refused the transformer's token "
                                          f"({status}: {detail})")  # fmt: skip
            code = status if 400 <= status < 500 else 502
            raise PredictorError(code, f"predictor answered {status}: {detail}")
        if not isinstance(answer, dict):
            raise PredictorError(502, "predictor: not a V1 answer")
        return answer

    def _predictor(self) -> PredictorClient:
        """The keep-alive client of ``--predictor_host`` (KServe's predictor config)."""
        if self._client is None:
            config = self.predictor_config
            if config is None or not config.predictor_host:
                raise PredictorError(503, "no predictor configured (--predictor_host)")
            self._client = PredictorClient(
                config.predictor_host,
                use_ssl=config.predictor_use_ssl,
                timeout=float(config.predictor_request_timeout_seconds),
            )
        return self._client

    # ------------------------------------------------------------------ the fast route
    async def handle_v1_predict(self, body: bytes, client: str | None = None) -> tuple[int, bytes]:
        """``:predict`` without the web framework: (status, JSON body)."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return 400, orjson.dumps({"error": f"Unrecognized request format: {exc}"})
        try:
            rows, aggregates = await self.transform(payload)
            answer = await self.forward(rows, current_request_id())
        except InvalidInput as exc:
            return 400, orjson.dumps({"error": str(exc)})
        except PredictorError as exc:
            return exc.status, orjson.dumps({"error": str(exc)})
        except StoreError as exc:
            return 503, orjson.dumps({"error": str(exc)})
        answer["aggregates"] = aggregates
        return 200, orjson.dumps(answer)

    # ------------------------------------------------------------------ KServe's route
    async def preprocess(
        self, payload: dict | bytes | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        if isinstance(payload, InferRequest):
            raise InvalidInput("the feature transformer takes V1 :predict requests")
        if isinstance(payload, bytes | bytearray | str):  # KServe passes non-JSON types raw
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"Unrecognized request format: {exc}") from None
        try:
            rows, aggregates = await self.transform(payload)
        except StoreError as exc:
            raise ServerNotReady(str(exc)) from None
        _AGGREGATES.set(aggregates)
        return {"instances": rows}

    async def predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        assert isinstance(payload, dict)
        request_id = (headers or {}).get("x-request-id") or current_request_id()
        try:
            return await self.forward(payload["instances"], request_id)
        except PredictorError as exc:
            if exc.status < 500:
                raise InvalidInput(str(exc)) from None
            raise ServerNotReady(str(exc)) from None

    async def postprocess(
        self,
        result: dict | Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if isinstance(result, dict):
            result["aggregates"] = _AGGREGATES.get()
        return result


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    parser.add_argument("--spec", required=True, help="the model's spec YAML")
    parser.add_argument(
        "--feature_store",
        default=os.environ.get("GOVML_FEATURE_STORE", "memory"),
        help="memory (in process, the default) or redis://host:port/db",
    )
    parser.add_argument("--history", default=None, help="Parquet history to warm memory up")
    parser.add_argument("--allow_cold_start", action="store_true")
    parser.add_argument("--feature_prefix", default=PREFIX, help="namespace prefix of the keys")
    parser.add_argument(
        "--predictor_token_file",
        default=None,
        help=f"file holding the bearer token for the predictor (or ${TOKEN_ENV})",
    )
    parser.add_argument("--max_body_bytes", type=int, default=1 << 20)
    server_options(parser)
    parser.set_defaults(predictor_request_timeout_seconds=5)
    return parser


NO_PREDICTOR_TOKEN = (
    f"error: --predictor_token_file FILE (or {TOKEN_ENV}) is required: the model server "
    "answers only bearer-token holders"
)


def predictor_token(args: argparse.Namespace) -> str | int:
    """The transformer's token for its predictor, or the exit code of a refusal."""
    from serving.token_files import read_token

    if args.predictor_token_file:
        try:
            return read_token(args.predictor_token_file)
        except GovMLError as exc:
            return refuse(f"error: {exc}", USAGE)
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or refuse(NO_PREDICTOR_TOKEN, USAGE)


def _predictor_config(args: argparse.Namespace) -> Any:
    """KServe's settings for the calls to the predictor (V1, as the options say)."""
    from kserve.predictor_config import PredictorConfig

    return PredictorConfig(
        predictor_host=args.predictor_host,
        predictor_protocol="v1",
        predictor_use_ssl=args.predictor_use_ssl,
        predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
        predictor_request_retries=args.predictor_request_retries,
        predictor_health_check=args.enable_predictor_health_check,
    )


def main(argv: list[str] | None = None) -> int:
    return serve_main(build_parser(), argv, log, _load)


def _load(args: argparse.Namespace) -> Loaded | int:
    """The feature transformer, loaded (or the exit code of a refusal)."""
    token = predictor_token(args)
    if isinstance(token, int):
        return token
    if not args.predictor_host:
        log.error("--predictor_host is required (host:port of the model server)")
        return REFUSED
    if args.predictor_protocol != "v1":
        log.error("the feature transformer talks V1 to its predictor (--predictor_protocol v1)")
        return REFUSED
    state = OnlineState(
        args.feature_store, args.feature_prefix, args.history, args.allow_cold_start
    )
    model = FeatureTransformer(args.model_name, args.spec, state, token)
    if not model.load():
        return REFUSED
    from kserve import model_server

    from serving.schema_openapi import document_requests

    assert model.schema_ is not None
    document_requests(
        model_server.app, args.model_name, None, model.schema_.json_schema(), verbs=("predict",)
    )
    route = f"/v1/models/{args.model_name}:predict"
    fast_routes = {
        route: (
            lambda body, client, _length: model.handle_v1_predict(body, client),
            lambda: model.ready,
        )
    }
    return Loaded(model, fast_routes, options={"predictor_config": _predictor_config(args)})


if __name__ == "__main__":
    sys.exit(main())
