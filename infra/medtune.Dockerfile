# medtune's checkout with its locked environment (CPU torch), for the Prefect worker of infra/compose.yaml.
# The checkout is also the workspace the scheduled runs use (infra/prefect.yaml: /opt/medtune).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git make && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/medtune
COPY . /opt/medtune
RUN make setup PY=python3
ENV PATH=/opt/medtune/.venv/bin:$PATH DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
