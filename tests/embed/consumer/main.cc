// An embedding project: generated stubs + a pool buffer, through DirectChannel.
#include <cstdio>

#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/direct_channel.h"
#include "kv/kv.hrpc.h"

class KvImpl final : public kv::Kv::Service {
 public:
  hrpc::Status Get(hrpc::ServerContext&, const kv::GetRequest& req, kv::GetReply* reply) override {
    if (req.key() != "k1") return hrpc::NotFoundError(req.key());
    reply->set_value("v1");
    return hrpc::Status::Ok();
  }
};

int main() {
  auto pool = hrpc::mempool::Pool::Create({.arena_bytes = 4 * hrpc::mempool::kMiB,
                                           .max_class_bytes = 1 * hrpc::mempool::kMiB});
  if (!pool.ok()) return 2;
  auto buf = (*pool)->Allocate(4096);
  if (!buf.ok()) return 3;

  KvImpl impl;
  hrpc::DirectChannel channel;
  if (!channel.AddService(&impl).ok()) return 4;
  kv::Kv::Stub stub(&channel);
  hrpc::ClientContext ctx;
  kv::GetRequest req;
  req.set_key("k1");
  kv::GetReply reply;
  hrpc::Status s = stub.Get(ctx, req, &reply);
  std::printf("kv_embed: get k1 -> %s %s\n", reply.value().c_str(), s.ToString().c_str());
  return s.ok() ? 0 : 1;
}
