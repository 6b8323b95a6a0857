"""`cermin serve`: an append-only repository server with split credentials (Starlette + uvicorn)."""
