"""ASGI layers around the app, outermost first in ``create_app``: telemetry, CORS, the body
limit, the request limit, read-your-writes."""
