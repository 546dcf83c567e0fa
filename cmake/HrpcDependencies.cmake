# Third-party dependencies, shared by the build and by hrpcConfig.cmake so that
# find_package(hrpc) re-finds exactly what the build linked against: liburing
# only with HRPC_WITH_NVME, ibverbs and rdmacm only with HRPC_WITH_RDMA.

find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(Boost 1.74 REQUIRED COMPONENTS context)
pkg_check_modules(hrpc_numa REQUIRED IMPORTED_TARGET numa)
pkg_check_modules(hrpc_hwloc REQUIRED IMPORTED_TARGET hwloc)
pkg_check_modules(hrpc_isal REQUIRED IMPORTED_TARGET libisal)  # CRC32C (Debian: libisal-dev)
pkg_check_modules(hrpc_crypto REQUIRED IMPORTED_TARGET libcrypto)  # peer authentication: HMAC-SHA256 (libssl-dev)
pkg_check_modules(hrpc_ssl REQUIRED IMPORTED_TARGET libssl)  # TLS on TCP (libssl-dev)
pkg_check_modules(hrpc_cares REQUIRED IMPORTED_TARGET libcares)  # host names, off the workers (libc-ares-dev)
if(HRPC_WITH_NVME)
  pkg_check_modules(hrpc_uring REQUIRED IMPORTED_TARGET liburing)
endif()
if(HRPC_WITH_RDMA)
  pkg_check_modules(hrpc_ibverbs REQUIRED IMPORTED_TARGET libibverbs)
  pkg_check_modules(hrpc_rdmacm REQUIRED IMPORTED_TARGET librdmacm)
endif()
find_package(Protobuf REQUIRED)
# The HTTP endpoint: Prometheus text format (prometheus-cpp-dev) and the HTTP
# server (libmicrohttpd-dev: event-driven, with bounds on connections, header
# memory and idle time).
find_package(prometheus-cpp CONFIG REQUIRED)
pkg_check_modules(hrpc_microhttpd REQUIRED IMPORTED_TARGET libmicrohttpd)
# HTTP clients (libcpp-httplib-dev: Debian builds it as a library, with
# OpenSSL, zlib and brotli; its pkg-config flags must be used so the headers
# match).
pkg_check_modules(hrpc_httplib REQUIRED IMPORTED_TARGET cpp-httplib)
# etcd naming: etcd's v3 JSON gateway through cpp-httplib, its JSON through
# nlohmann-json (nlohmann-json3-dev; header-only, used by no public header).
find_package(nlohmann_json 3 REQUIRED)
