# Orchestration and training image: Airflow 3.3 components, MLflow server, the
# lifecycle DAGs and the govml CLI. Installs exactly requirements/orchestration.lock.
# Build from the project root:  docker build -f docker/orchestration.Dockerfile -t govml-orchestration .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GOVML_HOME=/opt/govml \
    GOVML_VAR_DIR=/var/lib/govml \
    AIRFLOW_HOME=/var/lib/govml/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/govml/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin govml

WORKDIR /opt/govml
COPY requirements/orchestration.lock requirements/orchestration.lock
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip sync --system --no-cache requirements/orchestration.lock

COPY setup.cfg pyproject.toml README.md ./
COPY pipelines/ pipelines/
COPY validation/ validation/
COPY registry/ registry/
COPY serving/ serving/
COPY ops/ ops/
COPY dags/ dags/
COPY specs/ specs/
RUN uv pip install --system --no-cache --no-deps . \
 && mkdir -p /var/lib/govml && chown -R govml:govml /var/lib/govml

USER govml
EXPOSE 8080 5000
# docker/compose.yaml picks the component: api-server, scheduler, dag-processor,
# triggerer, or `mlflow server ...`.
ENTRYPOINT ["airflow"]
CMD ["api-server"]
