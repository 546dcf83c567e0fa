// hrpc.Reflection, served by every Server: services sorted by name with their
// methods and types, the .proto files (imports first, each once) for services
// with full descriptors, name and ids only for a service without, stats that
// leave reflection calls out, and the name reserved.
#include <algorithm>
#include <array>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <gtest/gtest.h>

#include "hrpc/reflection.hrpc.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "hrpc_test/echo.hrpc.h"

namespace {

namespace pb = google::protobuf;
namespace echo = hrpc_test::echo;

class EchoImpl final : public echo::Echo::Service {
 public:
  hrpc::Status Echo(hrpc::ServerContext&, const echo::EchoRequest& req, echo::EchoResponse* resp) override {
    resp->set_text(req.text());
    return hrpc::Status::Ok();
  }
  hrpc::Status Ping(hrpc::ServerContext&, const echo::Empty&, echo::Empty*) override { return hrpc::Status::Ok(); }
};

class AdminImpl final : public echo::Admin::Service {
 public:
  hrpc::Status Stats(hrpc::ServerContext&, const echo::Empty&, echo::EchoResponse*) override {
    return hrpc::Status::Ok();
  }
  hrpc::Status Trace(hrpc::ServerContext&, const hrpc_test::common::Header::Trace&,
                     hrpc_test::common::Header*) override {
    return hrpc::Status::Ok();
  }
};

// A service whose .proto is not in the process (as a lite-runtime one): only
// its name and method table are known.
class OpaqueService final : public hrpc::Service {
 public:
  explicit OpaqueService(std::string_view name) : name_(name) {
    methods_[0] = {name_, "Put", "zz.Opaque.Put", hrpc::ServiceIdOf(name_), hrpc::MethodIdOf("Put")};
  }
  std::string_view service_name() const noexcept override { return name_; }
  uint32_t service_id() const noexcept override { return hrpc::ServiceIdOf(name_); }
  std::span<const hrpc::MethodDescriptor> methods() const noexcept override { return methods_; }
  hrpc::Status CallMethod(uint32_t, hrpc::ServerContext&, std::string_view, hrpc::ResponseWriter&) override {
    return hrpc::UnimplementedError("opaque");
  }

 private:
  std::string_view name_;
  std::array<hrpc::MethodDescriptor, 1> methods_;
};

struct Env {
  std::unique_ptr<hrpc::Runtime> runtime;
  std::unique_ptr<hrpc::Server> server;
  std::unique_ptr<hrpc::RpcChannel> channel;
  EchoImpl echo_impl;
  AdminImpl admin_impl;
  OpaqueService opaque{"zz.Opaque"};

  Env() {
    hrpc::RuntimeOptions ro;
    ro.transport_choice = hrpc::TransportChoice::kTcp;
    runtime = std::move(hrpc::Runtime::Create(ro).value());
    hrpc::ServerOptions so;
    so.listen = {"tcp://127.0.0.1:0"};
    server = std::move(hrpc::Server::Create(*runtime, so).value());
    EXPECT_TRUE(server->RegisterService(&echo_impl).ok());
    EXPECT_TRUE(server->RegisterService(&admin_impl).ok());
    EXPECT_TRUE(server->RegisterService(&opaque).ok());
    EXPECT_TRUE(server->Start().ok());
    channel = std::move(hrpc::RpcChannel::Create(*runtime, server->listen_uris().at(0)).value());
  }
};

hrpc::ListServicesResponse List(hrpc::RpcChannel& channel, bool descriptors) {
  hrpc::Reflection::Stub stub(&channel);
  hrpc::ClientContext ctx;
  ctx.set_timeout(std::chrono::seconds(10));
  hrpc::ListServicesRequest req;
  req.set_include_descriptors(descriptors);
  hrpc::ListServicesResponse resp;
  const hrpc::Status s = stub.ListServices(ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return resp;
}

TEST(Reflection, ListsServicesMethodsAndTypes) {
  Env env;
  const hrpc::ListServicesResponse list = List(*env.channel, false);
  std::vector<std::string> names;
  for (const auto& s : list.services()) names.push_back(s.name());
  EXPECT_EQ(names, (std::vector<std::string>{"hrpc.Reflection", "hrpc_test.echo.Admin", "hrpc_test.echo.Echo",
                                             "zz.Opaque"}));
  EXPECT_EQ(list.file_descriptors_size(), 0);  // not asked for

  const hrpc::ServiceInfo& e = list.services(2);
  EXPECT_EQ(e.service_id(), echo::Echo::kServiceId);
  EXPECT_EQ(e.proto_file(), "hrpc_test/echo.proto");
  ASSERT_EQ(e.methods_size(), 2);
  EXPECT_EQ(e.methods(0).name(), "Echo");
  EXPECT_EQ(e.methods(0).method_id(), hrpc::MethodIdOf("Echo"));
  EXPECT_EQ(e.methods(0).input_type(), "hrpc_test.echo.EchoRequest");
  EXPECT_EQ(e.methods(0).output_type(), "hrpc_test.echo.EchoResponse");
  EXPECT_EQ(list.services(1).methods(1).input_type(), "hrpc_test.common.Header.Trace");

  const hrpc::ServiceInfo& o = list.services(3);
  EXPECT_EQ(o.service_id(), hrpc::ServiceIdOf("zz.Opaque"));
  EXPECT_EQ(o.proto_file(), "");
  ASSERT_EQ(o.methods_size(), 1);
  EXPECT_EQ(o.methods(0).name(), "Put");
  EXPECT_EQ(o.methods(0).input_type(), "");
}

TEST(Reflection, DescriptorsBuildInOrderEachFileOnce) {
  Env env;
  const hrpc::ListServicesResponse list = List(*env.channel, true);
  pb::DescriptorPool pool;  // empty: every import must come before its importer
  std::vector<std::string> files;
  for (const std::string& bytes : list.file_descriptors()) {
    pb::FileDescriptorProto proto;
    ASSERT_TRUE(proto.ParseFromString(bytes));
    ASSERT_NE(pool.BuildFile(proto), nullptr) << proto.name();
    files.push_back(proto.name());
  }
  // hrpc/reflection.proto, then hrpc_test/common.proto before echo.proto,
  // which both Admin and Echo come from (once); nothing for zz.Opaque.
  EXPECT_EQ(files, (std::vector<std::string>{"hrpc/reflection.proto", "hrpc_test/common.proto",
                                             "hrpc_test/echo.proto"}));
  const pb::MethodDescriptor* m = pool.FindMethodByName("hrpc_test.echo.Echo.Echo");
  ASSERT_NE(m, nullptr);
  EXPECT_NE(m->input_type()->FindFieldByName("header"), nullptr);
}

TEST(Reflection, StatsLeaveReflectionCallsOut) {
  Env env;
  echo::Echo::Stub stub(env.channel.get());
  for (int i = 0; i < 3; ++i) {
    hrpc::ClientContext ctx;
    echo::EchoRequest req;
    req.set_text("x");
    echo::EchoResponse resp;
    ASSERT_TRUE(stub.Echo(ctx, req, &resp).ok());
  }
  List(*env.channel, true);
  hrpc::Reflection::Stub reflection(env.channel.get());
  hrpc::GetStatsResponse stats;
  // The server counts a call once its response is sent: wait for the third.
  for (int attempt = 0; attempt < 500; ++attempt) {
    hrpc::ClientContext ctx;
    stats.Clear();
    ASSERT_TRUE(reflection.GetStats(ctx, hrpc::GetStatsRequest(), &stats).ok());
    auto it = std::find_if(stats.methods().begin(), stats.methods().end(),
                           [](const auto& m) { return m.method() == "hrpc_test.echo.Echo.Echo"; });
    ASSERT_NE(it, stats.methods().end());
    if (it->count() == 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::vector<std::string> methods;
  for (const auto& m : stats.methods()) {
    methods.push_back(m.method());
    if (m.method() == "hrpc_test.echo.Echo.Echo") {
      EXPECT_EQ(m.count(), 3u);
      EXPECT_EQ(m.errors(), 0u);
      EXPECT_GT(m.p50_us(), 0);
    }
  }
  EXPECT_EQ(methods, (std::vector<std::string>{"hrpc_test.echo.Admin.Stats", "hrpc_test.echo.Admin.Trace",
                                               "hrpc_test.echo.Echo.Echo", "hrpc_test.echo.Echo.Ping",
                                               "zz.Opaque.Put"}));
  EXPECT_GT(stats.uptime_ns(), 0u);
  EXPECT_EQ(env.server->Stats().size(), methods.size());
}

TEST(Reflection, NameIsReserved) {
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  auto server = hrpc::Server::Create(so);
  ASSERT_TRUE(server.ok());
  OpaqueService impostor("hrpc.Reflection");
  const hrpc::Status s = (*server)->RegisterService(&impostor);
  EXPECT_EQ(s.code(), hrpc::StatusCode::kAlreadyExists) << s.ToString();
}

}  // namespace
