"""Shared fixtures: the project root, an isolated settings folder, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import PG_ADMIN_URL, pg_unavailable

ROOT = Path(__file__).resolve().parent.parent

# Model servers started by the tests do not compile their model in the background (each
# would spend ~15 s of CPU in LLVM beside the test): the compiled batch scorer is tested
# in tests/integration/test_compiled.py and by the model server of test_model_server.py, which
# turn it on.
os.environ.setdefault("GOVML_COMPILED", "0")


@pytest.fixture
def fresh_engines() -> Iterator[None]:
    """Dispose of the governance store's cached engines after the test."""
    yield
    from registry.store import dispose_engines

    dispose_engines()


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The PostgreSQL server on 127.0.0.1:5432; required in CI, skipped elsewhere if absent."""
    reason = pg_unavailable(PG_ADMIN_URL)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL does not answer at {PG_ADMIN_URL}: {reason}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {reason}")
    return PG_ADMIN_URL


@pytest.fixture
def pg_database(pg_admin_url: str) -> Iterator[str]:
    """A URL for a fresh, not yet existing database name; dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"govml_test_{uuid.uuid4().hex[:10]}"
    url = make_url(pg_admin_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# Browser tests: headless Debian Chromium driven by Playwright (never a downloaded
# browser). Outside CI they skip when Chromium is absent; in CI they must run.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is not installed (make browser installs it)")
        pytest.skip("chromium not installed; `make browser` installs Debian's chromium")
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[object]:
    """Chromium for one browser-test module. Playwright's sync API runs an asyncio loop
    in the main thread while it is open: per module (not per session), so that the
    tests after the browser tests find no event loop running there."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="session")
def german_credit_model(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The German Credit model of :func:`tests.german_credit.train_german_credit`, trained once
    for the model-server tests (none changes the model, its files or its rows)."""
    from tests.german_credit import train_german_credit

    return train_german_credit(tmp_path_factory.mktemp("german-credit-model"))


# ------------------------------------------------------------------- one shared stack
# The modules that need a running German Credit stack and leave it as they found it
# share one (tests.airflow_api.SharedStack). Under `make test` (pytest-xdist, ``--dist
# loadfile``) each test file is one unit of work for a worker, and these files are one
# unit together, so they share the stack on one worker (pytest-xdist's own
# ``loadgroup`` cannot group them: with pytest 9 its group suffix no longer reaches the
# scheduler). The stack stops after the last of their tests in a row.
SHARED_STACK = "german_credit_stack"
SHARED_STACK_FILES = (
    "tests/e2e/",
    "tests/security/test_run_identity.py",
    "tests/security/test_run_modes.py",
)
_SHARED_STACK_KEY = pytest.StashKey[object]()


def _shared_stack_file(nodeid: str) -> bool:
    return nodeid.split("::")[0].startswith(SHARED_STACK_FILES)


@pytest.fixture(scope="session")
def german_credit_stack(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """The :class:`tests.airflow_api.SharedStack`; ``.running()`` gives the running stack.
    Only tests in :data:`SHARED_STACK_FILES` may use it."""
    from tests.airflow_api import SharedStack

    shared = SharedStack(tmp_path_factory.mktemp("shared-stack"))
    pytestconfig.stash[_SHARED_STACK_KEY] = shared
    yield shared
    shared.stop()


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile``, with :data:`SHARED_STACK_FILES` one unit of work. (The
    serving environment, where tests/integration/test_compiled.py runs pytest, has no
    pytest-xdist: the hook is optional.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedStackScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SHARED_STACK if _shared_stack_file(nodeid) else nodeid.split("::")[0]

    return SharedStackScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield  # the test's own fixtures (a module's last: its module's) go first
    if _shared_stack_file(item.nodeid) and (
        nextitem is None or not _shared_stack_file(nextitem.nodeid)
    ):
        shared = item.session.config.stash.get(_SHARED_STACK_KEY, None)
        if shared is not None:
            shared.stop()
    return result


class AuditClock:
    """The audit trail's clock, set by a test: ``clock.at(T)``, ``clock.advance(hours=2)``."""

    def __init__(self, start) -> None:  # noqa: ANN001
        self.now = start

    def __call__(self):  # noqa: ANN204
        return self.now

    def at(self, when) -> None:  # noqa: ANN001
        self.now = when

    def advance(self, **delta: float) -> None:
        import datetime as dt

        self.now = self.now + dt.timedelta(**delta)


@pytest.fixture
def audit_clock(monkeypatch: pytest.MonkeyPatch) -> AuditClock:
    """Governance events occur when the test says (approval deadlines, expiry)."""
    import datetime as dt

    from registry import audit

    clock = AuditClock(dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC))
    monkeypatch.setattr(audit, "clock", clock)
    return clock


# ------------------------------------------------------------------- processes left behind
# Every process a test starts must be stopped by that test (or its fixture). The session
# marks its environment; at the end, after every fixture finalizer has run (pytest tears
# the last test's fixtures down, session scope included, before ``pytest_sessionfinish``),
# any process still alive that descends from pytest or carries the mark (a daemon that
# detached from its parent keeps its environment) is listed, killed, and fails the run.
SESSION_MARK = "PYTEST_GOVML_SESSION"
os.environ.setdefault(SESSION_MARK, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
# Helpers of the interpreter itself that live as long as pytest does, not started by a test.
_INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _session_processes() -> list[object]:
    import psutil

    me = psutil.Process()
    mark = os.environ[SESSION_MARK]
    found = {p.pid: p for p in me.children(recursive=True)}
    for proc in psutil.process_iter(["uids"]):
        if proc.pid == me.pid or proc.pid in found:
            continue
        try:
            if proc.info["uids"] and proc.info["uids"].real != os.getuid():
                continue
            if proc.environ().get(SESSION_MARK) == mark:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    alive = []
    for proc in found.values():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if not any(helper in cmdline for helper in _INTERPRETER_HELPERS):
            alive.append(proc)
    return alive


@pytest.hookimpl(trylast=True)  # after pytest tore the remaining fixtures down (-x, ^C)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import psutil

    if os.environ.get(SESSION_MARK, "").split("-")[0] != str(os.getpid()):
        return  # a pytest run inside a test: its parent session checks
    left = _session_processes()
    if left:  # a process told to stop may need a moment to exit
        _, left = psutil.wait_procs(left, timeout=5)
    if not left:
        return
    names = []
    for proc in left:
        try:
            names.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=5)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "processes started by the tests were still running (killed):\n  " + (
        "\n  ".join(names)
    )
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
        reporter.write_line(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
