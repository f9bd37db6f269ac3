-- The MLflow tracking server's store, beside Dagster's (POSTGRES_DB); run once, on an empty volume.
CREATE DATABASE mlflow;
