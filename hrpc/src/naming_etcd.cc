#include "naming_internal.h"

namespace hrpc::internal {

Result<std::unique_ptr<NamingWatcher>> MakeEtcdWatcher(std::string_view uri, const NamingOptions&) {
  return UnimplementedError("etcd naming is not built yet: " + std::string(uri));
}

}  // namespace hrpc::internal

namespace hrpc {
Result<std::unique_ptr<EtcdRegistration>> EtcdRegistration::Create(EtcdRegistrationOptions) {
  return UnimplementedError("etcd registration is not built yet");
}
}  // namespace hrpc
