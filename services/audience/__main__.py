from services.audience.server import create_server
from services.audience.settings import AudienceSettings
from services.common.grpc_server import run_service

if __name__ == "__main__":
    run_service("audience", AudienceSettings, create_server)
