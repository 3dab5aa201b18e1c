-- One server, one database per store (governance is created by POSTGRES_DB).
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;  -- MLflow's basic-auth app: users, roles, grants
