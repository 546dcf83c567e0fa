// The Echo service shared by echo_server and throughput_server.
#pragma once

#include <chrono>
#include <cstdint>
#include <utility>

#include "common/proc_cpu.h"
#include "echo/echo.hrpc.h"
#include "hrpc/rpc/client_context.h"
#include "hrpc/rpc/server.h"

namespace hrpc::examples {

class EchoServiceImpl final : public hrpc_examples::Echo::Service {
 public:
  explicit EchoServiceImpl(const hrpc::Server* server = nullptr) : server_(server) {}
  void set_server(const hrpc::Server* s) { server_ = s; }
  // Relay mode: every Echo is passed on to the server behind `next` (a
  // channel on the same runtime as this server: the call leaves from the
  // handler's own worker, and the pulled attachment goes on without a copy).
  void set_forward(hrpc::Channel* next) { next_ = next; }

  hrpc::Status Echo(hrpc::ServerContext& ctx, const hrpc_examples::EchoRequest& req,
                    hrpc_examples::EchoResponse* resp) override {
    if (next_ != nullptr) {
      hrpc::ClientContext out;
      out.set_deadline(ctx.deadline());  // the caller's: the relay gives up when it does
      if (req.echo_attachment()) out.set_response_attachment_capacity(ctx.request_attachment().size());
      out.request_attachment() = std::move(ctx.request_attachment());
      HRPC_TRY(hrpc_examples::Echo::Stub(next_).Echo(out, req, resp));
      ctx.response_attachment() = std::move(out.response_attachment());
      return hrpc::Status::Ok();
    }
    resp->set_text(req.text());
    resp->set_attachment_bytes(ctx.request_attachment().size());
    if (req.echo_attachment()) ctx.response_attachment() = std::move(ctx.request_attachment());
    return hrpc::Status::Ok();
  }

  hrpc::Status Chat(hrpc::ServerContext&,
                    hrpc::ServerReaderWriter<hrpc_examples::EchoResponse, hrpc_examples::EchoRequest>* stream) override {
    hrpc_examples::EchoRequest req;
    hrpc::mempool::IoBuf att;
    while (stream->Read(&req, &att)) {
      hrpc_examples::EchoResponse resp;
      resp.set_text(req.text());
      resp.set_attachment_bytes(att.size());
      if (!stream->Write(resp, req.echo_attachment() ? std::move(att) : hrpc::mempool::IoBuf())) break;
      att = hrpc::mempool::IoBuf();
    }
    return hrpc::Status::Ok();
  }

  hrpc::Status ServerStats(hrpc::ServerContext&, const hrpc_examples::StatsRequest&,
                           hrpc_examples::StatsResponse* resp) override {
    resp->set_cpu_ns(SelfCpuNs());
    resp->set_uptime_ns(static_cast<uint64_t>((std::chrono::steady_clock::now() - start_).count()));
    if (server_ != nullptr) resp->set_table(hrpc::FormatStatsTable(server_->Stats()));
    return hrpc::Status::Ok();
  }

 private:
  const hrpc::Server* server_;
  hrpc::Channel* next_ = nullptr;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace hrpc::examples
