# The one `egret` binary (controller, agent, CLI) in a small Debian image.
#   docker build -t REGISTRY/egret:TAG .
# Builder and runtime are the same Debian release, so the binary finds the glibc it was linked
# against.
FROM rust:1.95-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p egret \
 && install -D -m 0755 target/release/egret /out/egret

FROM debian:trixie-slim
# nftables: the agent programs its table with `nft`; iproute2 and conntrack: inspection and
# repair on a node (`kubectl exec ... -- ip rule`, `conntrack -L`).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nftables iproute2 conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/egret /usr/local/bin/egret
ENTRYPOINT ["/usr/local/bin/egret"]
