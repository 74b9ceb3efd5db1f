# The MLflow tracking server of infra/compose.yaml: PostgreSQL driver and S3 client added to the pinned MLflow.
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.43.117
ENV MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
EXPOSE 5000
