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


# lines as dag.test() and the execution API log them (Airflow 3.3)
DAG_TEST_LOG = """\
2026-12-07T00:50:45.720808Z [info     ] [DAG TEST] starting task_id=trigger map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-07T00:50:52.517050Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a2 loc=task_instances.py:485 new_state=success rows_affected=1 ti_id=01a2
2026-12-07T00:50:52.568563Z [info     ] [DAG TEST] end task task_id=trigger map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-07T00:50:52.568761Z [info     ] [DAG TEST] starting task_id=champion map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
Traceback (most recent call last):
mlflow.exceptions.MlflowException: When an mlflow-artifacts URI was supplied, the tracking URI must be a valid http or https URI
2026-12-07T00:51:25.580190Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a2 loc=task_instances.py:485 new_state=failed rows_affected=1 ti_id=01a2
2026-12-07T00:51:25.622839Z [info     ] [DAG TEST] end task task_id=champion map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-07T00:51:25.634455Z [info     ] [DAG TEST] starting task_id=ingest map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
"""  # noqa: E501


def test_progress_reads_each_tasks_state_from_the_dag_test_output() -> None:
    from ops.run_summary import progress

    assert progress(DAG_TEST_LOG) == {
        "trigger": "success",
        "champion": "failed",
        "ingest": "running",
    }


def test_the_failure_reason_prefers_the_project_error_over_other_exceptions() -> None:
    from ops.lifecycle_runner import failure_reason

    assert failure_reason(DAG_TEST_LOG) == (
        "MlflowException: When an mlflow-artifacts URI was supplied, the tracking URI must be "
        "a valid http or https URI"
    )
    gate_failed = "GateFailedError: 1 gate(s) failed: demographic_parity_ratio 0.61 < 0.8"
    gate = DAG_TEST_LOG + f"airflow.sdk.exceptions.AirflowFailException: {gate_failed}\n"
    assert failure_reason(gate) == gate_failed


def test_the_failure_reason_of_a_task_log_from_the_rest_api() -> None:
    from ops.airflow_runs import reason_from_log

    failed = {
        "event": "Task failed with exception",
        "level": "error",
        "error_detail": [
            {
                "exc_type": "AirflowFailException",
                "exc_value": "DataValidationError: data_path /nonexistent.csv: no such file",
                "is_cause": False,
                "frames": [],
            },
            {"exc_type": "DataValidationError", "exc_value": "data_path ...", "is_cause": True},
        ],
    }
    other = {
        "event": "Task failed with exception",
        "error_detail": [{"exc_type": "KeyError", "exc_value": "'amount'", "is_cause": False}],
    }
    assert reason_from_log([{"event": "::group::"}, failed, {"event": "done"}]) == (
        "DataValidationError: data_path /nonexistent.csv: no such file"
    )
    assert reason_from_log([other]) == "KeyError: 'amount'"
    assert reason_from_log([{"event": "nothing failed"}]) == ""
