"""The app without its operations layer (request ids, the access log, the request metrics):
the baseline that section 7 measures their cost against. Everything else is ``app.main``'s.

    DATABASE_URL=sqlite:///./bench.db uvicorn bench.plain_app:app
"""

from typing import cast

from app.main import create_app
from app.middleware.telemetry import Telemetry

app = create_app()
app.user_middleware = [m for m in app.user_middleware if cast(object, m.cls) is not Telemetry]
