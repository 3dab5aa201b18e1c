"""The KServe model server and its deployers. Runs in .venv-serving; no Airflow."""
