#!/usr/bin/env bash
# Installs the Debian 12 packages hrpc needs, only when some are missing.
# Sourced by demo.sh and test.sh; safe to run on its own.
set -euo pipefail

HRPC_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libgtest-dev libgmock-dev libbenchmark-dev
  libboost-context-dev libnuma-dev numactl libhwloc-dev hwloc
  libisal-dev libssl-dev libc-ares-dev liburing-dev libibverbs-dev librdmacm-dev rdma-core ibverbs-providers
  libprotobuf-dev libprotoc-dev protobuf-compiler
  libspdlog-dev libfmt-dev
  libcli11-dev  # command-line flags: the hrpc tool, the samples, the benchmarks
  python3-matplotlib  # bench/plot.py
  libgrpc++-dev protobuf-compiler-grpc  # bench/grpc_echo: the same-run gRPC baseline
  prometheus-cpp-dev libmicrohttpd-dev  # the HTTP endpoint: /metrics, /status, /rpcz
  libcpp-httplib-dev  # HTTP clients: etcd's JSON gateway, the endpoint's tests
  dnsmasq-base  # a local DNS server for the dns:// naming tests (run on 127.0.0.1 by the tests)
  nlohmann-json3-dev  # etcd naming: the JSON of etcd's v3 gateway
  etcd-server  # the etcd naming tests run their own etcd (free 127.0.0.1 ports, a temp dir; a system etcd.service is not used)
  iproute2 procps fio
  nftables  # the network-namespace tests: loss and partitions between the namespaces (nft, inside them only)
  clang libclang-rt-14-dev  # tests/fuzz: libFuzzer (-fsanitize=fuzzer) and clang's sanitizers
)
# The Soft-RoCE guest (../shared/rxe) and the reference RDMA tools.
HRPC_RXE_PACKAGES=(
  qemu-system-x86 busybox-static cpio kmod ibverbs-utils rdmacm-utils perftest
)

hrpc_missing_packages() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

hrpc_install_deps() {
  local missing
  missing=$(hrpc_missing_packages "${HRPC_PACKAGES[@]}" "${HRPC_RXE_PACKAGES[@]}")
  [ -z "${missing// /}" ] && return 0
  echo "hrpc: installing missing Debian packages: $missing"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  hrpc_install_deps
fi
