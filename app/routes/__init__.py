"""Routers of the REST API, one module per area; app.api.create_app includes them."""
