# The MLflow tracking server of infra/compose.yaml: PostgreSQL driver and S3 client added to the pinned MLflow, and
# the basic-auth settings (infra/mlflow/: basic_auth.ini, bootstrap_auth.py run by the one-shot `mlflow-auth`).
FROM python:3.11-slim
# mlflow[auth]: Flask-WTF, which the basic-auth app needs (CSRF protection of its UI forms)
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary==2.9.13 boto3==1.43.117
COPY infra/mlflow/basic_auth.ini infra/mlflow/bootstrap_auth.py /etc/mlflow/
ENV MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini
EXPOSE 5000
