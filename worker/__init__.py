"""Celery app and tasks that adapt the trainer to the database and artifact store: arrives with the job-service issue."""
