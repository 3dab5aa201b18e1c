"""Airflow's DAG folder, importable as a package for its support code
(:mod:`dags.govml_airflow`: the DAG factory, the approval operator, the retrain assets,
the auth manager and the ``dag.test()`` runner). ``.airflowignore`` keeps the DAG
processor from parsing anything but the DAG files."""
