import signal
import sys

from services.common import asyncio_runner, logs
from services.common.settings import SettingsError
from services.gateway.server import create_server
from services.gateway.settings import GatewaySettings


def main() -> None:
    try:
        settings = GatewaySettings.from_env()
    except SettingsError as exc:
        sys.exit(f"gateway: {exc}")

    logs.configure("gateway", settings.log_level)
    server = create_server(settings)
    # uvicorn drains on SIGTERM and SIGINT, then raises the signal again for the handlers it
    # found; these make that second delivery a no-op, so an orderly stop exits with 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    asyncio_runner.run(server.serve())


if __name__ == "__main__":
    main()
