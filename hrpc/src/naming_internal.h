// The naming sources behind MakeNamingWatcher(), one per scheme.
#pragma once

#include <memory>
#include <string_view>

#include "hrpc/rpc/naming.h"

namespace hrpc::internal {

// etcd://host:port/prefix (naming_etcd.cc).
Result<std::unique_ptr<NamingWatcher>> MakeEtcdWatcher(std::string_view uri, const NamingOptions& options);

}  // namespace hrpc::internal
