"""Pseudonymous keys of the online feature states: ``<namespace>:<entity column>:<HMAC of
the entity value>``, under ``GOVML_FEATURE_KEY`` (see :mod:`serving.feature_store`)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets

from pipelines.errors import ConfigError
from pipelines.features_online import OnlineFeatures

log = logging.getLogger("serving.feature_store")  # the store's log, as before

KEY_ENV = "GOVML_FEATURE_KEY"
MIN_KEY_BYTES = 16
PREFIX = "govml:features"


class KeyMaker:
    """Pseudonymous state keys of one spec's online features."""

    def __init__(self, online: OnlineFeatures, secret: bytes, prefix: str = PREFIX) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(f"{KEY_ENV}: the key needs at least {MIN_KEY_BYTES} bytes")
        self._secret = secret
        self.key_id = hmac.new(secret, b"govml-key-id", hashlib.sha256).hexdigest()[:16]
        self.namespace = f"{prefix}:{online.spec_name}:{online.fingerprint}:{self.key_id[:8]}"

    def key(self, entity: str, text: str) -> str:
        digest = hmac.digest(self._secret, f"{entity}\x00{text}".encode(), "sha256")
        return f"{self.namespace}:{entity}:{digest[:16].hex()}"

    @property
    def marker(self) -> str:
        """The key of the warm-up record (:meth:`FeatureStore.mark_warm`)."""
        return f"{self.namespace}:warm"


def secret_from_env(required: bool) -> bytes:
    """``GOVML_FEATURE_KEY``; a random key when unset and not ``required``."""
    value = os.environ.get(KEY_ENV, "")
    if value:
        return value.encode("utf-8")
    if required:
        raise ConfigError(
            f"{KEY_ENV} is not set: the feature store keys card and customer ids by their "
            "HMAC; give the transformer and `govml features backfill` the same key"
        )
    log.warning("%s is not set: the in-process feature store uses a random key", KEY_ENV)
    return secrets.token_bytes(32)
