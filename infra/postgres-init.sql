-- Run once by the postgres image on an empty volume: the databases beside MLflow's (POSTGRES_DB):
-- the Prefect server's, and the MLflow basic-auth app's users and grants (infra/mlflow/basic_auth.ini).
CREATE DATABASE prefect OWNER medtune;
CREATE DATABASE mlflow_auth OWNER medtune;
