"""Celery app and tasks that adapt the trainer to the database and artifact store.

Arrives with the job-service issue; see ../shared/DESIGN.md.
"""
