from services.common.grpc_server import run_service
from services.segment.server import create_server
from services.segment.settings import SegmentSettings

if __name__ == "__main__":
    run_service("segment", SegmentSettings, create_server)
