"""Reading state files that may not exist yet (:func:`pipelines.files.read_json_or_none`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import RegistryError
from pipelines.files import read_json_or_none


def test_a_missing_file_is_none_and_a_present_one_its_value(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert read_json_or_none(path, RegistryError, "state") is None
    path.write_text('{"id": "t1", "status": "running"}')
    assert read_json_or_none(path, RegistryError, "state") == {"id": "t1", "status": "running"}


def test_an_unreadable_file_is_one_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(RegistryError, match=r"^A/B test state .*state\.json: Expecting") as info:
        read_json_or_none(path, RegistryError, f"A/B test state {path}")
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(RegistryError, match="a folder: .*Is a directory"):
        read_json_or_none(tmp_path, RegistryError, "a folder")
