// Service and method identity: what a request frame names and what a generated
// stub passes to a Channel.
//
// Ids are stable 32-bit hashes of names, so that client and server agree
// without a registry and the wire never carries strings:
//   service id = FNV-1a-32 of the fully qualified service name, "pkg.Service"
//                (just "Service" when the .proto has no package);
//   method id  = FNV-1a-32 of the bare method name, "Method" (unique within
//                its service; protoc-gen-hrpc refuses a service whose methods
//                collide).
// FNV-1a-32: h = 2166136261; for each byte b: h = (h ^ b) * 16777619 (mod 2^32).
// Renaming a service, its package, or a method changes its id (like gRPC's path).
#pragma once

#include <cstdint>
#include <string_view>

namespace hrpc {

constexpr uint32_t Fnv1a32(std::string_view s) noexcept {
  uint32_t h = 2166136261u;
  for (char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 16777619u;
  }
  return h;
}
constexpr uint32_t ServiceIdOf(std::string_view full_service_name) noexcept { return Fnv1a32(full_service_name); }
constexpr uint32_t MethodIdOf(std::string_view method_name) noexcept { return Fnv1a32(method_name); }

static_assert(Fnv1a32("") == 2166136261u && Fnv1a32("a") == 0xe40c292cu, "FNV-1a-32 reference values");

// Static description of one unary method. Generated code defines these as
// constexpr tables; the strings point at static storage.
struct MethodDescriptor {
  std::string_view service_name;  // "pkg.Service"
  std::string_view method_name;   // "Method" (proto spelling, not the C++ one)
  std::string_view full_name;     // "pkg.Service.Method", for messages and stats
  uint32_t service_id = 0;        // ServiceIdOf(service_name)
  uint32_t method_id = 0;         // MethodIdOf(method_name)
  // protobuf's method option `option idempotency_level = IDEMPOTENT;` (or
  // NO_SIDE_EFFECTS): calling it twice has the effect of calling it once, so a
  // cluster channel may retry it on another server.
  bool idempotent = false;
};

constexpr uint64_t Fnv1a64(std::string_view s) noexcept {
  uint64_t h = 14695981039346656037ull;
  for (char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace hrpc
