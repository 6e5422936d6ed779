# syntax=docker/dockerfile:1
#
# The production image: the `quotebook` binary built without the Auth0 emulator, on a small Debian.
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) -> builder (cook the
# dependencies, then build the app) -> runtime. Dependencies live in their own layer, keyed only on
# the recipe, so a code change rebuilds the app crate and not the ~400 crates under it.

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# apalis-postgres checks its SQL with sqlx's query macros; offline mode makes them use the query
# data shipped in that crate instead of connecting to a database (there is none at build time, and
# Fly passes no secrets to builds). Our own crate has no query macros.
ENV SQLX_OFFLINE=true
COPY --from=planner /app/recipe.json recipe.json
# The patched sqlx-postgres (vendor/README.md) is a dependency, not a workspace member: the cook
# step builds it from these sources.
COPY vendor vendor
# Same profile, lockfile and features as the final build, or the cooked layer would not be reused.
RUN cargo chef cook --release --locked --no-default-features --recipe-path recipe.json
COPY . .
# --no-default-features leaves out the `emulator` feature: the production binary cannot serve
# fake logins even if misconfigured (the production config refuses AUTH0_EMULATOR as well).
RUN cargo build --release --locked --no-default-features --bin quotebook

FROM debian:bookworm-slim AS runtime
# ca-certificates: today the binary's TLS clients (reqwest for Auth0, sqlx for Neon) carry their own
# webpki root store, so this is insurance for anything that reads the system store (a dependency
# switching to native roots, a debugging tool). It costs under a megabyte.
# Unpinned on purpose: the image should pick up Debian's security updates on every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged user: nothing in the app needs root. USER is numeric so the runtime needs
# no passwd lookup, and a fixed uid keeps file ownership predictable if a volume is ever mounted.
RUN groupadd --system --gid 10001 quotebook \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin quotebook
COPY --from=builder /app/target/release/quotebook /usr/local/bin/quotebook
WORKDIR /app
USER 10001:10001
ENV APP_ENV=production \
    PORT=8080 \
    RUST_LOG=info
EXPOSE 8080
# Subcommands go in CMD so that `docker run IMAGE migrate` and Fly's process and release commands
# (which replace CMD and keep ENTRYPOINT) all run `quotebook <subcommand>`.
ENTRYPOINT ["quotebook"]
CMD ["serve"]
