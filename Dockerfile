# Kmesh-C++ node image: kmesh-daemon, kmesh-cni and kmeshctl on Debian 12.
# Build with install/image.sh (it makes debian:bookworm-slim locally where no registry is
# reachable, and passes --network host so RUN apt-get reaches Debian's archive under podman).
# Plain `docker build .` / `podman build .` work too where the registry is reachable.
#
# The image runs as root: loading BPF programs, pinning them in bpffs, attaching them to cgroups
# and installing the CNI plugin on the node all need root (or CAP_BPF, CAP_SYS_ADMIN,
# CAP_NET_ADMIN on the host), so a non-root USER would not work.

FROM debian:bookworm-slim AS builder
# Only the package list first: this layer (the slow one) is rebuilt only when the list changes.
COPY install/deps.sh /tmp/deps.sh
RUN bash /tmp/deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . /src
# ccache in a cache mount: a source change recompiles only what changed (the mount outlives the
# layer). Only the three shipped binaries are built. The BPF object is embedded in kmesh-daemon
# as a libbpf skeleton, so there is no separate .bpf.o to ship.
ENV CCACHE_DIR=/ccache
RUN --mount=type=cache,id=kmesh-ccache,target=/ccache \
    cmake -S /src -B /build -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
 && cmake --build /build -j"$(nproc)" --target kmesh-daemon kmesh-cni kmeshctl \
 && install -D -s -m 0755 -t /out/usr/local/bin \
        /build/agent/kmesh-daemon /build/cni/kmesh-cni /build/ctl/kmeshctl \
 && ccache --show-stats
# The runtime packages are derived from the binaries themselves (the Debian way, dpkg-shlibdeps),
# so they follow the build's libraries without a second hand-kept list. libcurl4 is named: both
# kmesh-daemon and kmesh-cni open it with dlopen on the kube client's first call
# (common/curl_dl.cpp), which dpkg-shlibdeps cannot see.
RUN mkdir -p /tmp/shlibs/debian && cd /tmp/shlibs && touch debian/control \
 && dpkg-shlibdeps -O /out/usr/local/bin/* \
    | sed -e 's/^shlibs:Depends=//' | tr ',' '\n' \
    | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' | grep . > /tmp/shlibs/packages \
 && echo libcurl4 >> /tmp/shlibs/packages && sort -u /tmp/shlibs/packages > /out/runtime-packages \
 && echo "runtime packages:" $(cat /out/runtime-packages)

FROM debian:bookworm-slim
ARG VERSION=unknown
LABEL org.opencontainers.image.title="kmesh-cpp" \
      org.opencontainers.image.description="Kmesh-C++ node agent, CNI plugin and kmeshctl" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/runtime-packages /tmp/runtime-packages
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(cat /tmp/runtime-packages) \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /tmp/runtime-packages
COPY --from=builder /out/usr/local/bin/ /usr/local/bin/
CMD ["kmesh-daemon", "--help"]
