#include <charconv>
#include <string>

#include "hrpc/transport/transport.h"

namespace hrpc::transport {

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
