"""OpenAI-compatible HTTP server: `api_server.build_app(engine, ...)`, served by `deltaserve serve`."""
