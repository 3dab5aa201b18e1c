-- One server, one database per store (governance is created by POSTGRES_DB).
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
