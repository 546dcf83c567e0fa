#include <charconv>
#include <string>

#include "hrpc/transport/transport.h"

namespace hrpc::transport {
namespace {
// What a host name or an IP address (v4, v6 with an optional %zone) is made
// of. Anything else (a NUL that would cut the name short for the resolver, a
// '/', a bracket, a space, a control byte) is refused, so that every accepted
// URI prints (Uri::ToString) to one that parses to the same parts.
std::string HexByte(char c) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const auto b = static_cast<unsigned char>(c);
  return {kDigits[b >> 4], kDigits[b & 15]};
}
bool HostChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
         c == '_' || c == ':' || c == '%';
}
}  // namespace

std::string_view AccessName(Access a) {
  switch (a) {
    case Access::kRead: return "read";
    case Access::kWrite: return "write";
    case Access::kReadWrite: return "read|write";
  }
  return "none";
}

std::string Uri::ToString() const {
  if (scheme == "loop") return "loop://" + host;
  const bool v6 = host.find(':') != std::string::npos;
  return scheme + "://" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<Uri> ParseUri(std::string_view uri) {
  const size_t sep = uri.find("://");
  if (sep == std::string_view::npos) {
    return InvalidArgumentError("URI '" + std::string(uri) + "': expected scheme://...");
  }
  Uri out;
  out.scheme = std::string(uri.substr(0, sep));
  std::string_view rest = uri.substr(sep + 3);
  if (out.scheme == "loop") {
    if (rest.empty()) return InvalidArgumentError("URI '" + std::string(uri) + "': empty loopback name");
    out.host = std::string(rest);
    return out;
  }
  if (out.scheme != "tcp" && out.scheme != "rdma") {
    return InvalidArgumentError("URI '" + std::string(uri) + "': unknown scheme '" + out.scheme +
                                "' (tcp, rdma, loop)");
  }
  std::string_view host, port;
  if (!rest.empty() && rest.front() == '[') {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      return InvalidArgumentError("URI '" + std::string(uri) + "': expected [v6addr]:port");
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      return InvalidArgumentError("URI '" + std::string(uri) + "': missing :port");
    }
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty()) return InvalidArgumentError("URI '" + std::string(uri) + "': empty host");
  for (char c : host) {
    if (!HostChar(c)) {
      return InvalidArgumentError("URI '" + std::string(uri) + "': byte 0x" + HexByte(c) +
                                  " in the host (letters, digits, . - _ : % only)");
    }
  }
  unsigned value = 0;
  auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || p != port.data() + port.size() || value > 65535) {
    return InvalidArgumentError("URI '" + std::string(uri) + "': bad port '" + std::string(port) + "'");
  }
  out.host = std::string(host);
  out.port = static_cast<uint16_t>(value);
  return out;
}

}  // namespace hrpc::transport
