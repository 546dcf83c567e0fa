// The URI parsers (transport::ParseUri, and the RPC layer's ResolveUri that
// adds a scheme to a bare host:port) on arbitrary text: a URI that parses
// prints (Uri::ToString) to one that parses to the same parts.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/transport/transport.h"

using namespace hrpc;

namespace {
void RoundTrip(const transport::Uri& u) {
  const std::string text = u.ToString();
  auto again = transport::ParseUri(text);
  HRPC_FUZZ_CHECK(again.ok(), "'%s' does not parse again: %s", text.c_str(), again.status().ToString().c_str());
  HRPC_FUZZ_CHECK(again->scheme == u.scheme && again->host == u.host && again->port == u.port,
                  "'%s' parses to other parts", text.c_str());
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto u = transport::ParseUri(text); u.ok()) {
    RoundTrip(*u);
  } else {
    HRPC_FUZZ_CHECK(u.status().code() == StatusCode::kInvalidArgument, "%s", u.status().ToString().c_str());
  }
  for (TransportChoice choice : {TransportChoice::kTcp, TransportChoice::kRdma}) {
    auto r = ResolveUri(text, choice);
    if (!r.ok()) continue;
    auto u = transport::ParseUri(*r);
    HRPC_FUZZ_CHECK(u.ok(), "ResolveUri gave '%s', which does not parse: %s", r->c_str(),
                    u.status().ToString().c_str());
    RoundTrip(*u);
  }
  return 0;
}
