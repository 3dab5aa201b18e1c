"""A person opens the UIs the README names: logs into Airflow with the password from
the file `make up` names (it prints no password), and opens MLflow. Real servers on
loopback, real Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_airflow_login_with_the_password_from_the_named_file(
    browser, stack, tmp_path: Path
) -> None:  # noqa: ANN001
    settings, up_output = stack.settings, stack.up.stdout
    path = settings.airflow_home / "passwords.json"
    assert f"passwords in {path} (mode 0600, this account only);" in up_output
    passwords = json.loads(path.read_text())
    assert not any(password in up_output for password in passwords.values())
    page = browser.new_page()
    page.goto(settings.airflow_url, wait_until="networkidle")
    page.fill("input[name=username]", "reviewer")
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    page.wait_for_timeout(1000)
    assert page.locator("input[name=password]").count() == 1, "a wrong password must not log in"
    page.fill("input[name=username]", "reviewer")
    page.fill("input[name=password]", passwords["reviewer"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{settings.airflow_url}/**", timeout=30_000)
    page.get_by_role("link", name="Dags").first.wait_for(timeout=30_000)
    assert page.locator("input[name=password]").count() == 0
    page.screenshot(path=str(tmp_path / "airflow-home.png"))
    page.close()


def test_mlflow_ui_opens_for_a_reviewer_and_no_one_anonymous(browser, stack) -> None:  # noqa: ANN001
    settings = stack.settings
    anonymous = browser.new_page()
    answer = anonymous.request.get(f"{settings.mlflow_url}/api/2.0/mlflow/experiments/search")
    assert answer.status == 401, "the locked registry refuses anonymous readers"
    anonymous.close()
    passwords = json.loads((settings.airflow_home / "passwords.json").read_text())
    context = browser.new_context(
        http_credentials={"username": "reviewer", "password": passwords["reviewer"]}
    )
    page = context.new_page()
    page.goto(settings.mlflow_url, wait_until="load")
    page.get_by_text("Experiments").first.wait_for(timeout=30_000)
    assert "MLflow" in page.title()
    context.close()
