# Model-serving image: the KServe model server. Installs exactly
# requirements/serving.lock (KServe pins psutil<6 and pandas<3, so it never shares
# an environment with Airflow).
# Build from the project root:  docker build -f docker/serving.Dockerfile -t govml-serving .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GOVML_HOME=/opt/govml

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin govml

WORKDIR /opt/govml
COPY requirements/serving.lock requirements/serving.lock
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip sync --system --no-cache requirements/serving.lock

COPY setup.cfg pyproject.toml README.md ./
COPY pipelines/ pipelines/
COPY serving/ serving/
COPY specs/ specs/
RUN uv pip install --system --no-cache --no-deps .

USER govml
EXPOSE 8080
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--http_port", "8080"]
