#include "reflection.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <unordered_set>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include "hrpc/reflection.hrpc.h"

namespace hrpc::internal {
namespace {

namespace pb = google::protobuf;

// Appends `file` after the files it imports, each file once.
void AddFileWithImports(const pb::FileDescriptor* file, std::unordered_set<const pb::FileDescriptor*>& seen,
                        ListServicesResponse* response) {
  if (!seen.insert(file).second) return;
  for (int i = 0; i < file->dependency_count(); ++i) AddFileWithImports(file->dependency(i), seen, response);
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(response->add_file_descriptors());
}

class ReflectionService final : public Reflection::Service {
 public:
  ReflectionService(const std::unordered_map<uint32_t, hrpc::Service*>& services, const StatsRegistry& stats)
      : services_(services), stats_(stats), created_(std::chrono::steady_clock::now()) {}

  Status ListServices(ServerContext&, const ListServicesRequest& request, ListServicesResponse* response) override {
    std::vector<const hrpc::Service*> sorted;
    sorted.reserve(services_.size());
    for (const auto& [id, service] : services_) sorted.push_back(service);
    std::sort(sorted.begin(), sorted.end(),
              [](const hrpc::Service* a, const hrpc::Service* b) { return a->service_name() < b->service_name(); });
    // Services compiled with full descriptors are in the generated pool under
    // their proto name; lite ones are not, and are listed by name and id only.
    const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
    std::unordered_set<const pb::FileDescriptor*> seen;
    for (const hrpc::Service* service : sorted) {
      ServiceInfo* info = response->add_services();
      info->set_name(std::string(service->service_name()));
      info->set_service_id(service->service_id());
      const pb::ServiceDescriptor* sd = pool->FindServiceByName(info->name());
      if (sd != nullptr) info->set_proto_file(sd->file()->name());
      for (const MethodDescriptor& m : service->methods()) {
        MethodInfo* mi = info->add_methods();
        mi->set_name(std::string(m.method_name));
        mi->set_method_id(m.method_id);
        const pb::MethodDescriptor* md = sd != nullptr ? sd->FindMethodByName(mi->name()) : nullptr;
        if (md != nullptr) {
          mi->set_input_type(md->input_type()->full_name());
          mi->set_output_type(md->output_type()->full_name());
          mi->set_client_streaming(md->client_streaming());
          mi->set_server_streaming(md->server_streaming());
        }
      }
      if (sd != nullptr && request.include_descriptors()) AddFileWithImports(sd->file(), seen, response);
    }
    return Status::Ok();
  }

  Status GetStats(ServerContext&, const GetStatsRequest&, GetStatsResponse* response) override {
    for (const hrpc::MethodStats& s : stats_.Snapshot()) {
      MethodCallStats* m = response->add_methods();
      m->set_method(s.method);
      m->set_count(s.count);
      m->set_errors(s.errors);
      m->set_in_flight(s.in_flight);
      m->set_bytes_in(s.bytes_in);
      m->set_bytes_out(s.bytes_out);
      m->set_mean_us(s.mean_us);
      m->set_p50_us(s.p50_us);
      m->set_p99_us(s.p99_us);
      m->set_p999_us(s.p999_us);
      m->set_max_us(s.max_us);
    }
    response->set_uptime_ns(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - created_).count()));
    return Status::Ok();
  }

 private:
  const std::unordered_map<uint32_t, hrpc::Service*>& services_;
  const StatsRegistry& stats_;
  const std::chrono::steady_clock::time_point created_;
};

}  // namespace

std::unique_ptr<Service> MakeReflectionService(const std::unordered_map<uint32_t, Service*>& services,
                                               const StatsRegistry& stats) {
  return std::make_unique<ReflectionService>(services, stats);
}

}  // namespace hrpc::internal
