# One image for every service; each Deployment picks its service with its command
# (python -m services.<name>). See deploy/README.md for why.

# --- build: install the project and its pinned dependencies into a virtual environment ---
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
COPY protos ./protos
COPY services ./services
COPY audiencectl ./audiencectl

# The generated stubs are rebuilt from the .proto files and must equal the committed ones.
RUN /opt/venv/bin/pip install -c constraints.txt grpcio-tools \
 && mkdir /tmp/gen \
 && /opt/venv/bin/python -m grpc_tools.protoc -I . --python_out=/tmp/gen --pyi_out=/tmp/gen \
      --grpc_python_out=/tmp/gen protos/*/v1/*.proto \
 && cd /tmp/gen && for f in $(find protos -name '*_pb2*'); do cmp "$f" "/src/$f"; done \
 && /opt/venv/bin/pip uninstall -y grpcio-tools

RUN /opt/venv/bin/pip install -c constraints.txt .

# --- run: the virtual environment on a slim base, as an unprivileged user ---
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
EXPOSE 8080 50051 50052 50053 9091 9092 9093
CMD ["python", "-m", "services.gateway"]
