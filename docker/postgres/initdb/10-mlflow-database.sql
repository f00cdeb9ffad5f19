-- Runs once, when the PostgreSQL data directory is empty (docker-entrypoint-initdb.d), as the
-- POSTGRES_USER against POSTGRES_DB (`inkwell`, which holds samples and rollout state).
-- MLflow gets its own database so its tables never mix with Inkwell's.
CREATE DATABASE mlflow OWNER inkwell;
