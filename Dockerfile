# tokengate: a small runtime image, built in a full Rust image.
#   docker build -t tokengate .

FROM rust:1.95-slim-bookworm AS build
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

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libsqlite3-0 libpq5 tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tokengate \
 && mkdir -p /app/data && chown tokengate /app/data
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
WORKDIR /app
USER tokengate
ENV TOKENGATE_LISTEN=0.0.0.0:8080 \
    TOKENGATE_DATABASE_URL=sqlite:///app/data/tokengate.db
VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["tokengate", "healthcheck"]
ENTRYPOINT ["tokengate"]
CMD ["serve"]
