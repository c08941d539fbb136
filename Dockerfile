# MedSettle gateway image. Two stages: the build stage generates the protobuf/gRPC stubs from proto/
# (they are never committed) and installs the project into a virtualenv; the runtime stage copies that
# virtualenv and the city data, and runs as a non-root user.
#
#   docker build -t medsettle .
#   docker run -p 50051:50051 -e MEDSETTLE_REDIS_URL=redis://gateway:PASSWORD@redis:6379/0 \
#       -v certs:/data/certs medsettle serve --listen 0.0.0.0:50051 --data-dir /data --host gw.example.org
#   docker run -p 50051:50051 medsettle serve --listen 0.0.0.0:50051 --data-dir /data --demo   # embedded redis
#
# mTLS always (docs/SECURITY.md): without TLS flags the gateway creates a development CA and terminal
# certificates in /data/certs on first start; the HEALTHCHECK presents that folder's probe certificate.
#
# The same commands as on a checkout (README): `medsettle serve`, `medsettle load`, `medsettle demo`.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY gateway gateway
COPY rules_cache rules_cache
COPY adapters adapters
COPY loadtest loadtest
COPY telemetry telemetry
# Stubs at build time, into gateway/_proto, so the installed package carries them.
RUN pip install "grpcio-tools>=1.62" "protobuf>=4.25" \
    && python -c "from gateway.protos import generate; generate(force=True)" \
    && pip install . \
    && python -c "from gateway.protos import pb; assert pb.SettleRequest"
# The engine compiled with mypyc (gateway/compiled_engine.py; about three times faster per split): built
# here in /src, where the sources and the mypy configuration are, then its extension modules and the
# digest of the sources they were built from copied beside the installed package's identical sources
# (building inside site-packages would make mypy take the libraries there for our own modules). The
# runtime stage needs no compiler: the extension modules link against libpython only.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && pip install "mypy>=1.10" \
    && python -c "import sys; from gateway.compiled_engine import build; sys.exit(build())" \
    && SP=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && cp gateway/engine/*.so gateway/engine/.compiled-from "$SP/gateway/engine/" && cp ./*__mypyc*.so "$SP/" \
    && cd / && python -c "from gateway import compiled_engine as c; assert c.kind() == 'compiled', c.kind()"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /app medsettle \
    && mkdir /data && chown medsettle /data
COPY --from=build /opt/venv /opt/venv
COPY citydata /app/citydata
ENV PATH=/opt/venv/bin:$PATH MEDSETTLE_CITYDATA=/app/citydata PYTHONUNBUFFERED=1
WORKDIR /app
USER medsettle
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["medsettle", "health", "--target", "127.0.0.1:50051", "--certs", "/data/certs"]
ENTRYPOINT ["medsettle"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--data-dir", "/data"]
