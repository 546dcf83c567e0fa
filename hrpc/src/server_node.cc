// ParseServerNode: one server entry of a naming source.
#include <cctype>
#include <string>

#include "hrpc/rpc/naming.h"
#include "hrpc/transport/transport.h"

namespace hrpc {

namespace {

bool IsSpace(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

Result<ServerNode> ParseServerNode(std::string_view entry) {
  const std::string_view e = Trim(entry);
  if (e.empty()) return InvalidArgumentError("empty server entry");
  size_t end = 0;
  while (end < e.size() && !IsSpace(e[end])) ++end;
  const std::string_view address = e.substr(0, end);
  const std::string_view tag = Trim(e.substr(end));
  for (char c : tag) {
    if (IsSpace(c)) {
      return InvalidArgumentError("server entry '" + std::string(e) + "': more than one word after the address");
    }
  }
  // A scheme-less "host:port" is checked as tcp://host:port (the channel
  // picks its transport later) and kept as written.
  const bool has_scheme = address.find("://") != std::string_view::npos;
  auto uri = transport::ParseUri(has_scheme ? std::string(address) : "tcp://" + std::string(address));
  if (!uri.ok()) {
    return InvalidArgumentError("server entry '" + std::string(e) + "': " + std::string(uri.status().message()));
  }
  if (uri->scheme != "loop" && uri->port == 0) {
    return InvalidArgumentError("server entry '" + std::string(e) + "': port 0 (expected 1..65535)");
  }
  return ServerNode{std::string(address), std::string(tag)};
}

}  // namespace hrpc
