"""The FastAPI service: REST API, dashboard, ORM models, artifact store.

Arrives with the job-service issue; see ../shared/DESIGN.md.
"""
