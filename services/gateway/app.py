"""The gateway's Starlette application.

``POST /mparticle`` takes every Firehose message mParticle sends and answers the matching
``*_response`` (``endpoint.py``); ``GET /healthz`` says the process is alive; ``GET /readyz``
says whether the gRPC services it needs are serving; ``GET /metrics`` is for Prometheus.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.gateway.access_log import AccessLog
from services.gateway.endpoint import MparticleEndpoint
from services.gateway.errors import ApiError
from services.gateway.settings import GatewaySettings
from services.gateway.upstreams import Upstreams


def create_app(settings: GatewaySettings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstreams = Upstreams(settings)
        app.state.upstreams = upstreams
        app.state.endpoint = MparticleEndpoint(settings, upstreams)
        yield
        await upstreams.close()

    async def mparticle(request: Request) -> Response:
        return await request.app.state.endpoint(request)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        upstreams = await request.app.state.upstreams.health(settings.request_timeout_seconds)
        ready = all(upstreams.values())
        body = {"status": "ready" if ready else "not ready", "upstreams": upstreams}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(prometheus_client.generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        """Routing errors (404, 405) in the same JSON shape as every other error."""
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, code, str(exc.detail)).response(exc.headers)

    app = Starlette(
        routes=[
            Route("/mparticle", mparticle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        middleware=[Middleware(AccessLog)],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    # No redirect from /mparticle/ to /mparticle: mParticle does not follow redirects.
    app.router.redirect_slashes = False
    return app
