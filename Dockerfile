# syntax=docker/dockerfile:1
# Broker and operator images, built from the same release binaries the
# README runs (`cargo build --release`):
#
#   docker build --target broker   -t sluice-broker .
#   docker build --target operator -t sluice-operator .
#
# Final images are distroless (glibc, CA certificates, no shell), run as
# the non-root user 65532, and write nothing outside their volumes, so a
# read-only root filesystem works.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice-broker -p sluice-operator --bins \
 && mkdir -p /out \
 && cp target/release/sluice-broker target/release/sluice-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS broker
COPY --from=build /out/sluice-broker /usr/local/bin/sluice-broker
USER 65532:65532
ENV SLUICE_DATA_DIR=/var/lib/sluice \
    SLUICE_LISTEN=0.0.0.0:9092 \
    SLUICE_ADMIN_LISTEN=0.0.0.0:9644
VOLUME ["/var/lib/sluice"]
EXPOSE 9092 9644
ENTRYPOINT ["/usr/local/bin/sluice-broker"]
CMD ["serve"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/sluice-operator /usr/local/bin/sluice-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice-operator"]
CMD ["run"]
