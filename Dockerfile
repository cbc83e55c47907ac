# syntax=docker/dockerfile:1
# Build: docker build -t portcullis .
# Run:   docker run -p 8080:8080 -v portcullis-data:/data -v "$PWD/portcullis-config:/etc/portcullis:ro" portcullis
#        (portcullis-config/ holds your portcullis.toml, made from config/container.toml, and policy.toml)

FROM rust:1-slim-bookworm AS build
# Pingora's zlib-ng needs cmake and a C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY static ./static
COPY benches ./benches
RUN cargo build --release --locked --bin portcullis \
 && strip target/release/portcullis

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system portcullis \
 && useradd --system --gid portcullis --home-dir /data --shell /usr/sbin/nologin portcullis \
 && mkdir -p /data /etc/portcullis \
 && chown portcullis:portcullis /data \
 && chmod 0700 /data
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY config/container.toml /etc/portcullis/portcullis.toml
COPY config/policy.toml /etc/portcullis/policy.toml
COPY static /usr/share/portcullis/static
ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml
USER portcullis
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["portcullis", "healthcheck"]
ENTRYPOINT ["portcullis"]
CMD ["serve"]
