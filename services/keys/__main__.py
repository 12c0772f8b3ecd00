from services.common.grpc_server import run_service
from services.keys.server import create_server
from services.keys.settings import KeysSettings

if __name__ == "__main__":
    run_service("keys", KeysSettings, create_server)
