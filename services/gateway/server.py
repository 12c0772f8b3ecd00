"""The gateway's HTTP server: the Starlette app on uvicorn, configured from settings. Building
one does not start it; with port 0 it binds a free port (read it back once started)."""

import math

import uvicorn

from services.gateway.app import create_app
from services.gateway.http_protocol import with_header_timeout
from services.gateway.settings import GatewaySettings


def create_server(settings: GatewaySettings) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            http=with_header_timeout(settings.header_timeout_seconds),
            # An idle connection is one whose next head has not arrived: the head's deadline
            # closes it, and uvicorn's own idle timer must not fire first.
            timeout_keep_alive=math.ceil(settings.header_timeout_seconds) + 1,
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        )
    )
