"""python -m services.api"""

from __future__ import annotations

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.logging import configure_logging

if __name__ == "__main__":
    settings = ApiSettings()
    configure_logging("api", settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,  # uvicorn's loggers go through our structlog handler
        timeout_graceful_shutdown=5,
    )
