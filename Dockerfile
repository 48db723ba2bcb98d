# tokengate: a small runtime image (Debian slim, non-root), its binary compiled in a
# full Rust image.
#
#   docker build -t tokengate .
#
# Needs a builder that skips the stages the target does not use: BuildKit (Docker's
# default builder since 23.0, and Compose's) or Podman/Buildah.
#
# Where no image can be pulled, BASE_IMAGE may be any Debian bookworm image (say one
# made with debootstrap and `podman import`), and `--target prebuilt` takes a
# tokengate built outside for that Debian from target/image/tokengate in the build
# context instead of compiling it: the test suite builds it so.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

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
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Everything but the binary: the libraries it links, an unprivileged user, the volume.
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libsqlite3-0 libpq5 tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tokengate \
 && mkdir -p /app/data && chown tokengate /app/data
WORKDIR /app
USER tokengate
ENV TOKENGATE_LISTEN=0.0.0.0:8080 \
    TOKENGATE_DATABASE_URL=sqlite:///app/data/tokengate.db
VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["tokengate", "healthcheck"]
ENTRYPOINT ["tokengate"]
CMD ["serve"]

# `--target prebuilt`: a tokengate built outside.
FROM runtime AS prebuilt
COPY target/image/tokengate /usr/local/bin/tokengate

# The default: the binary compiled above.
FROM runtime
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
