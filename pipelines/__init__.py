"""Pure, typed stage functions: data, spec, features, training, evaluation.

Nothing in this package imports Airflow or MLflow.
"""
