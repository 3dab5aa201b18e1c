"""Where the servers listen: loopback unless said otherwise, and said loudly."""

from __future__ import annotations

import logging

import pytest

from pipelines.errors import ConfigError
from serving.bind import BIND_HOST_ENV, bind_host, is_loopback


def test_loopback_by_default_and_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.bind"):
        assert bind_host(None, {}) == "127.0.0.1"
        assert bind_host("::1", {}) == "::1"
        assert bind_host(None, {BIND_HOST_ENV: "localhost"}) == "localhost"
    assert caplog.text == ""


def test_another_address_is_explicit_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.bind"):
        assert bind_host(None, {BIND_HOST_ENV: "0.0.0.0"}) == "0.0.0.0"
    assert "listening on 0.0.0.0 (GOVML_SERVING_BIND_HOST), not loopback" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="serving.bind"):
        # the command line wins over the environment
        assert bind_host("10.1.2.3", {BIND_HOST_ENV: "127.0.0.1"}) == "10.1.2.3"
    assert "listening on 10.1.2.3 (--host), not loopback" in caplog.text


def test_what_is_no_address_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^--host='0\.0\.0\.0 ; rm': not an IP address"):
        bind_host("0.0.0.0 ; rm", {})
    with pytest.raises(ConfigError, match=r"^GOVML_SERVING_BIND_HOST='http://x': not an IP"):
        bind_host(None, {BIND_HOST_ENV: "http://x"})


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com"):
        assert not is_loopback(host), host
