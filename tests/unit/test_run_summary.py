"""The run summary line survives log lines of other threads on the same output."""

from __future__ import annotations

import io

from ops.run_summary import PREFIX, read_summary, write_summary


class _Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write(self, s: str) -> int:
        self.calls += 1
        return super().write(s)


def test_the_summary_is_one_write_and_reads_back() -> None:
    out = _Writes()
    summary = {"dag_id": "fraud_lifecycle", "state": "success", "tasks": {"train": "success"}}
    write_summary(summary, out)
    assert out.calls == 1 and out.getvalue().endswith("\n")
    assert read_summary("log\n" + out.getvalue() + "more log\n") == summary


def test_a_log_line_appended_to_the_summary_is_ignored() -> None:
    # seen in CI: a task thread's log line landed after the JSON, before the newline
    text = (
        PREFIX + '{"state": "success", "tasks": {"a": "success"}}'
        "2026-11-29T07:06:50.707028Z [info     ] OpenLineageClient will use `file` transport\n"
    )
    assert read_summary(text) == {"state": "success", "tasks": {"a": "success"}}


def test_the_last_summary_counts_and_none_without_one() -> None:
    text = PREFIX + '{"state": "failed"}\nnoise\n' + PREFIX + '{"state": "success"}\n'
    assert read_summary(text) == {"state": "success"}
    assert read_summary("no summary here\n" + PREFIX + "{not json\n") is None
