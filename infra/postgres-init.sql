-- Run once by the postgres image on an empty volume: the Prefect server's database beside MLflow's (POSTGRES_DB).
CREATE DATABASE prefect OWNER medtune;
