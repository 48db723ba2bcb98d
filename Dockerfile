# tokengate: a small runtime image (Debian slim, non-root), its binary compiled in a
# full Rust image.
#
#   docker build -t tokengate .
#
# Where no image can be pulled, both images can be replaced: BASE_IMAGE by any
# Debian bookworm image (say one made with debootstrap and `podman import`), and
# TOKENGATE_BINARY=context takes a tokengate built outside, for the same Debian, from
# target/image/tokengate in the build context (the test suite does both).

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG BASE_IMAGE=debian:bookworm-slim
ARG TOKENGATE_BINARY=build

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev libsqlite3-dev libpq-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src src
COPY migrations migrations
COPY templates templates
COPY static static
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
 && cp target/release/tokengate /tokengate

# A binary built outside (TOKENGATE_BINARY=context).
FROM ${BASE_IMAGE} AS context
COPY target/image/tokengate /tokengate

FROM ${TOKENGATE_BINARY} AS binary

FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libsqlite3-0 libpq5 tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tokengate \
 && mkdir -p /app/data && chown tokengate /app/data
COPY --from=binary /tokengate /usr/local/bin/tokengate
WORKDIR /app
USER tokengate
ENV TOKENGATE_LISTEN=0.0.0.0:8080 \
    TOKENGATE_DATABASE_URL=sqlite:///app/data/tokengate.db
VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["tokengate", "healthcheck"]
ENTRYPOINT ["tokengate"]
CMD ["serve"]
