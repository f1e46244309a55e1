# maskpipe host + reference transform. Build: docker build -t maskpipe .
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release -p transform-wasm --target wasm32-wasip2 \
 && cargo build --release -p maskpipe

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/maskpipe /usr/local/bin/maskpipe
COPY --from=build /src/target/wasm32-wasip2/release/transform_wasm.wasm /opt/maskpipe/transform.wasm
ENV MASKPIPE_TRANSFORM=/opt/maskpipe/transform.wasm \
    MASKPIPE_CACHE_DIR=/tmp/maskpipe-cache
USER 65532:65532
ENTRYPOINT ["maskpipe"]
CMD ["run"]
