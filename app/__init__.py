"""The FastAPI service (REST API, dashboard, ORM models, artifact store): arrives with the job-service issue."""
