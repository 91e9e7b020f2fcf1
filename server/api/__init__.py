"""The HTTP API: FastAPI routers over the engine."""
