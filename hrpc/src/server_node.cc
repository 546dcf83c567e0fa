#include <cctype>
#include <string>

#include "hrpc/rpc/naming.h"
#include "hrpc/transport/transport.h"

namespace hrpc {

Result<ServerNode> ParseServerNode(std::string_view entry) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
  };
  entry = trim(entry);
  if (entry.empty()) return InvalidArgumentError("empty server entry");
  size_t ws = 0;
  while (ws < entry.size() && !std::isspace(static_cast<unsigned char>(entry[ws]))) ++ws;
  ServerNode node;
  node.uri = std::string(entry.substr(0, ws));
  node.tag = std::string(trim(entry.substr(ws)));
  const bool has_scheme = node.uri.find("://") != std::string::npos;
  auto parsed = transport::ParseUri(has_scheme ? node.uri : "tcp://" + node.uri);
  if (!parsed.ok()) {
    return parsed.status().WithContext("server entry '" + std::string(entry) + "'");
  }
  if (parsed->scheme != "loop" && parsed->port == 0) {
    return InvalidArgumentError("server entry '" + std::string(entry) + "': port 0");
  }
  return node;
}

}  // namespace hrpc
