// Generated stubs end to end through DirectChannel: the serialize / dispatch /
// parse path a remote call takes, without a transport.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/rpc/direct_channel.h"
#include "hrpc_test/echo.hrpc.h"
#include "hrpc_test/echo.hrpc.mock.h"
#include "hrpc_test/generic.hrpc.h"
#include "hrpc_test/generic.hrpc.mock.h"
#include "hrpc_test/legacy.hrpc.h"
#include "hrpc_test/legacy.hrpc.mock.h"
#include "nopkg.hrpc.h"

namespace hrpc {
namespace {

using hrpc_test::echo::EchoRequest;
using hrpc_test::echo::EchoResponse;
using hrpc_test::echo::Empty;
using ::testing::_;
using ::testing::DoAll;
using ::testing::Return;
using ::testing::SetArgPointee;

class EchoImpl final : public hrpc_test::echo::Echo::Service {
 public:
  Status Echo(ServerContext& ctx, const EchoRequest& request, EchoResponse* response) override {
    if (request.options().throw_()) throw std::runtime_error("handler exploded");
    if (request.options().fail()) {
      return Status(static_cast<StatusCode>(request.options().fail_code()), "failed on request: " + request.text());
    }
    std::string text;
    for (uint32_t i = 0; i < (request.has_repeat() ? request.repeat() : 1); ++i) text += request.text();
    response->set_text(text);
    *response->mutable_trace() = request.header().trace();
    response->set_attachment_bytes(ctx.request_attachment().size());
    seen_method = ctx.method() ? std::string(ctx.method()->full_name) : "";
    seen_peer = std::string(ctx.peer());
    seen_deadline = ctx.has_deadline();
    return Status::Ok();
  }
  Status Ping(ServerContext&, const Empty&, Empty*) override {
    ++pings;
    return Status::Ok();
  }
  int pings = 0;
  std::string seen_method;
  std::string seen_peer;
  bool seen_deadline = false;
};

class AdminImpl final : public hrpc_test::echo::Admin::Service {
 public:
  Status Stats(ServerContext&, const Empty&, EchoResponse* response) override {
    response->set_text("stats");
    return Status::Ok();
  }
  Status Trace(ServerContext&, const hrpc_test::common::Header_Trace& request,
               hrpc_test::common::Header* response) override {
    *response->mutable_trace() = request;
    response->set_shard(9);
    return Status::Ok();
  }
};

class SwitchImpl final : public hrpc_test::legacy::switch_::Service {
 public:
  Status delete_(ServerContext&, const hrpc_test::legacy::delete_& request, hrpc_test::legacy::Ack* response) override {
    if (request.new_() == -1) return Status::Ok();  // "forgets" the required Ack.ok
    response->set_ok(request.new_() == 42);
    return Status::Ok();
  }
  Status new_(ServerContext&, const hrpc_test::legacy::Ack& request,
              hrpc_test::legacy::delete__int* response) override {
    response->set_value(request.ok() ? 1 : 0);
    return Status::Ok();
  }
};

class AdderImpl final : public ::Adder::Service {
 public:
  Status Add(ServerContext&, const NoPkgRequest& request, NoPkgResponse* response) override {
    response->set_sum(request.a() + request.b());
    return Status::Ok();
  }
};

class StubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(channel_.AddService(&echo_).ok());
    ASSERT_TRUE(channel_.AddService(&admin_).ok());
    ASSERT_TRUE(channel_.AddService(&switch_).ok());
    ASSERT_TRUE(channel_.AddService(&adder_).ok());
  }
  EchoImpl echo_;
  AdminImpl admin_;
  SwitchImpl switch_;
  AdderImpl adder_;
  DirectChannel channel_;
};

TEST(GeneratedIdsTest, IdsAreFnv1aOfNames) {
  using hrpc_test::echo::Echo;
  EXPECT_EQ(Echo::kServiceName, "hrpc_test.echo.Echo");
  EXPECT_EQ(Echo::kServiceId, Fnv1a32("hrpc_test.echo.Echo"));
  ASSERT_EQ(Echo::kMethods.size(), 2u);
  EXPECT_EQ(Echo::kMethods[0].method_name, "Echo");
  EXPECT_EQ(Echo::kMethods[0].full_name, "hrpc_test.echo.Echo.Echo");
  EXPECT_EQ(Echo::kMethods[0].method_id, Fnv1a32("Echo"));
  EXPECT_EQ(Echo::kMethods[1].method_id, MethodIdOf("Ping"));
  EXPECT_EQ(Echo::kMethods[1].service_id, Echo::kServiceId);
  // protobuf's idempotency_level option (NO_SIDE_EFFECTS, IDEMPOTENT) marks
  // the methods a cluster channel may retry.
  EXPECT_FALSE(Echo::kMethods[0].idempotent);
  EXPECT_TRUE(Echo::kMethods[1].idempotent);
  EXPECT_TRUE(hrpc_test::echo::Admin::kMethods[0].idempotent);
  EXPECT_FALSE(hrpc_test::echo::Admin::kMethods[1].idempotent);
  EXPECT_NE(hrpc_test::echo::Admin::kServiceId, Echo::kServiceId);
  // Keyword-named service/methods keep their proto spelling on the wire.
  EXPECT_EQ(hrpc_test::legacy::switch_::kServiceName, "hrpc_test.legacy.switch");
  EXPECT_EQ(hrpc_test::legacy::switch_::kMethods[0].method_name, "delete");
  EXPECT_EQ(hrpc_test::legacy::Nothing::kMethods.size(), 0u);
  EXPECT_EQ(::Adder::kServiceName, "Adder");
  // Known value, so that a change of the hash is a visible protocol change.
  EXPECT_EQ(Fnv1a32("Echo"), 0x3b7d6ba4u) << std::hex << Fnv1a32("Echo");
}

TEST_F(StubTest, UnaryCallThroughGeneratedStub) {
  hrpc_test::echo::Echo::Stub stub(&channel_);
  ClientContext ctx;
  ctx.set_timeout(std::chrono::seconds(10));
  EchoRequest req;
  req.set_text("ab");
  req.set_repeat(3);
  req.mutable_header()->mutable_trace()->set_id(77);
  EchoResponse resp;
  Status s = stub.Echo(ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(resp.text(), "ababab");
  EXPECT_EQ(resp.trace().id(), 77u);
  EXPECT_EQ(echo_.seen_method, "hrpc_test.echo.Echo.Echo");
  EXPECT_EQ(echo_.seen_peer, "direct");
  EXPECT_TRUE(echo_.seen_deadline);
  EXPECT_EQ(ctx.peer(), "direct");
}

TEST_F(StubTest, SecondServiceAndImportedTypes) {
  hrpc_test::echo::Admin::Stub stub(&channel_);
  ClientContext ctx;
  hrpc_test::common::Header_Trace trace;
  trace.set_id(5);
  trace.set_origin("node-a");
  hrpc_test::common::Header header;
  ASSERT_TRUE(stub.Trace(ctx, trace, &header).ok());
  EXPECT_EQ(header.trace().origin(), "node-a");
  EXPECT_EQ(header.shard(), 9u);
  ClientContext ctx2;
  EchoResponse stats;
  ASSERT_TRUE(stub.Stats(ctx2, Empty(), &stats).ok());
  EXPECT_EQ(stats.text(), "stats");
}

TEST_F(StubTest, KeywordNamedServiceAndMethodsProto2) {
  hrpc_test::legacy::switch_::Stub stub(&channel_);
  ClientContext ctx;
  hrpc_test::legacy::delete_ req;
  req.set_new_(42);
  hrpc_test::legacy::Ack ack;
  ASSERT_TRUE(stub.delete_(ctx, req, &ack).ok());
  EXPECT_TRUE(ack.ok());
  hrpc_test::legacy::delete__int out;
  ClientContext ctx2;
  ASSERT_TRUE(stub.new_(ctx2, ack, &out).ok());
  EXPECT_EQ(out.value(), 1);
}

TEST_F(StubTest, Proto2MissingRequiredFieldIsRejectedBeforeSending) {
  hrpc_test::legacy::switch_::Stub stub(&channel_);
  ClientContext ctx;
  hrpc_test::legacy::delete_ req;  // `new` is required and unset
  hrpc_test::legacy::Ack ack;
  Status s = stub.delete_(ctx, req, &ack);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("lacks required fields: new"), std::string_view::npos) << s.ToString();
}

TEST_F(StubTest, Proto2ResponseMissingRequiredFieldIsInternal) {
  hrpc_test::legacy::switch_::Stub stub(&channel_);
  ClientContext ctx;
  hrpc_test::legacy::delete_ req;
  req.set_new_(-1);
  hrpc_test::legacy::Ack ack;
  Status s = stub.delete_(ctx, req, &ack);
  EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();
  EXPECT_NE(s.message().find("required"), std::string_view::npos) << s.ToString();
}

TEST_F(StubTest, Proto2MissingRequiredFieldOnTheWireIsInvalidArgument) {
  ClientContext ctx;
  std::string response;
  // An empty payload parses as a delete_ without its required field.
  Status s = channel_.CallRaw(hrpc_test::legacy::switch_::kServiceId, MethodIdOf("delete"), ctx, "", &response);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("hrpc_test.legacy.switch.delete"), std::string_view::npos);
}

TEST_F(StubTest, GlobalNamespaceService) {
  ::Adder::Stub stub(&channel_);
  ClientContext ctx;
  NoPkgRequest req;
  req.set_a(2);
  req.set_b(40);
  NoPkgResponse resp;
  ASSERT_TRUE(stub.Add(ctx, req, &resp).ok());
  EXPECT_EQ(resp.sum(), 42);
}

// A file with cc_generic_services: protoc's own classes (generic::Kv, a
// google::protobuf::Service, and generic::Kv_Stub) and hrpc's
// (generic::hrpc_services::Kv) side by side; hrpc's serve and call as usual,
// and the service keeps its wire name and id.
class GenericKvImpl final : public hrpc_test::generic::hrpc_services::Kv::Service {
 public:
  Status Get(ServerContext&, const hrpc_test::generic::KvRequest& request,
             hrpc_test::generic::KvResponse* response) override {
    response->set_value("value of " + request.key());
    return Status::Ok();
  }
};

TEST(GenericServicesFile, HrpcClassesLiveBesideProtocs) {
  static_assert(std::is_base_of_v<google::protobuf::Service, hrpc_test::generic::Kv>,
                "protoc's generic service class is still generated");
  static_assert(std::is_base_of_v<hrpc_test::generic::Kv, hrpc_test::generic::Kv_Stub>);
  using HrpcKv = hrpc_test::generic::hrpc_services::Kv;
  EXPECT_EQ(std::string(HrpcKv::kServiceName), "hrpc_test.generic.Kv");
  EXPECT_EQ(HrpcKv::kServiceId, hrpc::ServiceIdOf("hrpc_test.generic.Kv"));
  GenericKvImpl impl;
  DirectChannel channel;
  ASSERT_TRUE(channel.AddService(&impl).ok());
  HrpcKv::Stub stub(&channel);
  ClientContext ctx;
  hrpc_test::generic::KvRequest req;
  req.set_key("k1");
  hrpc_test::generic::KvResponse resp;
  ASSERT_TRUE(stub.Get(ctx, req, &resp).ok());
  EXPECT_EQ(resp.value(), "value of k1");
  // The gmock mock is generated there too.
  hrpc_test::generic::hrpc_services::MockKvStub mock;
  EXPECT_CALL(mock, Get(_, _, _)).WillOnce(Return(Status(hrpc::StatusCode::kNotFound, "no k2")));
  EXPECT_EQ(mock.Get(ctx, req, &resp).code(), hrpc::StatusCode::kNotFound);
}

TEST_F(StubTest, AsyncCallRunsCallbackOnce) {
  hrpc_test::echo::Echo::Stub stub(&channel_);
  ClientContext ctx;
  EchoRequest req;
  req.set_text("x");
  EchoResponse resp;
  int calls = 0;
  Status got = InternalError("not called");
  stub.EchoAsync(ctx, req, &resp, [&](Status s) {
    ++calls;
    got = std::move(s);
  });
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(got.ok()) << got.ToString();
  EXPECT_EQ(resp.text(), "x");
}

TEST_F(StubTest, FutureCallFromPlainThread) {
  hrpc_test::echo::Echo::Stub stub(&channel_);
  ClientContext ctx;
  EchoRequest req;
  req.set_text("fut");
  coro::Future<EchoResponse> f = stub.EchoFuture(ctx, req);
  Result<EchoResponse> r = f.Get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->text(), "fut");

  ClientContext ctx2;
  req.mutable_options()->set_fail(true);
  req.mutable_options()->set_fail_code(static_cast<int>(StatusCode::kNotFound));
  Result<EchoResponse> bad = stub.EchoFuture(ctx2, req).Get();
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kNotFound);
}

TEST_F(StubTest, SyncAndFutureCallsFromACoroutine) {
  auto worker = coro::Worker::Start(coro::WorkerOptions{});
  ASSERT_TRUE(worker.ok()) << worker.status().ToString();
  hrpc_test::echo::Echo::Stub stub(&channel_);
  coro::Future<std::string> f = coro::Async((*worker)->scheduler(), [&stub]() -> Result<std::string> {
    if (!coro::this_coro::InCoroutine()) return InternalError("not in a coroutine");
    EchoRequest req;
    req.set_text("co");
    ClientContext ctx;
    EchoResponse resp;
    HRPC_TRY(stub.Echo(ctx, req, &resp));
    ClientContext ctx2;
    HRPC_ASSIGN_OR_RETURN(EchoResponse second, stub.EchoFuture(ctx2, req).Get());
    return resp.text() + second.text();
  });
  Result<std::string> r = f.Get();  // this plain thread blocks; the coroutine ran on the worker
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, "coco");
}

TEST_F(StubTest, HandlerErrorReachesClientVerbatim) {
  hrpc_test::echo::Echo::Stub stub(&channel_);
  ClientContext ctx;
  EchoRequest req;
  req.set_text("blk7");
  req.mutable_options()->set_fail(true);
  req.mutable_options()->set_fail_code(static_cast<int>(StatusCode::kResourceExhausted));
  EchoResponse resp;
  Status s = stub.Echo(ctx, req, &resp);
  EXPECT_EQ(s, Status(StatusCode::kResourceExhausted, "failed on request: blk7"));
}

TEST_F(StubTest, HandlerExceptionBecomesInternal) {
  hrpc_test::echo::Echo::Stub stub(&channel_);
  ClientContext ctx;
  EchoRequest req;
  req.mutable_options()->set_throw_(true);
  EchoResponse resp;
  Status s = stub.Echo(ctx, req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("handler exploded"), std::string_view::npos) << s.ToString();
}

// A service written by hand (not generated) on a DirectChannel: what it
// throws is INTERNAL, OK without a response is INTERNAL, as over a
// transport, and the caller's context keeps no hook into the finished call.
class RawService final : public hrpc::Service {
 public:
  std::string_view service_name() const noexcept override { return "hrpc_test.Raw"; }
  uint32_t service_id() const noexcept override { return hrpc::ServiceIdOf(service_name()); }
  std::span<const hrpc::MethodDescriptor> methods() const noexcept override { return {}; }
  Status CallMethod(uint32_t method_id, ServerContext&, std::string_view, hrpc::ResponseWriter&) override {
    if (method_id == 1) throw std::runtime_error("raw handler failed");
    return Status::Ok();  // and no response
  }
  Status CallStream(uint32_t, ServerContext&, hrpc::ServerStreamBase&) override {
    return UnimplementedError("no streams");
  }
};

TEST(DirectChannelRaw, AHandWrittenServiceIsGuardedLikeOverATransport) {
  RawService raw;
  DirectChannel channel;
  ASSERT_TRUE(channel.AddService(&raw).ok());
  ClientContext ctx;
  std::string out;
  Status s = channel.CallRaw(raw.service_id(), 1, ctx, "", &out);
  EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();
  EXPECT_EQ(s.message(), "handler of hrpc_test.Raw threw: raw handler failed");
  ctx.Cancel();  // nothing of the call is left for it to touch
  EXPECT_TRUE(ctx.IsCancelled());
  ClientContext ctx2;
  s = channel.CallRaw(raw.service_id(), 2, ctx2, "", &out);
  EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();
  EXPECT_EQ(s.message(), "handler returned OK without a response");
}

TEST_F(StubTest, UnknownMethodIsUnimplemented) {
  using hrpc_test::echo::Echo;
  MethodDescriptor bogus{Echo::kServiceName, "Nope", "hrpc_test.echo.Echo.Nope", Echo::kServiceId,
                         MethodIdOf("Nope")};
  ClientContext ctx;
  Empty req, resp;
  Status s = channel_.CallMethod(bogus, ctx, req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s.ToString();
  EXPECT_NE(s.message().find("unknown method id"), std::string_view::npos);
  EXPECT_NE(s.message().find("hrpc_test.echo.Echo"), std::string_view::npos);
  // A service with no methods answers every method id with UNIMPLEMENTED too.
  hrpc_test::legacy::Nothing::Service none;
  ServerContext sctx;
  std::string out;
  StringResponseWriter writer(&out);
  EXPECT_EQ(none.CallMethod(MethodIdOf("Anything"), sctx, "", writer).code(), StatusCode::kUnimplemented);
}

TEST_F(StubTest, UnknownServiceIsUnimplemented) {
  MethodDescriptor bogus{"no.Such", "M", "no.Such.M", ServiceIdOf("no.Such"), MethodIdOf("M")};
  ClientContext ctx;
  Empty req, resp;
  Status s = channel_.CallMethod(bogus, ctx, req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s.ToString();
  EXPECT_NE(s.message().find("unknown service id"), std::string_view::npos);
}

TEST_F(StubTest, MalformedRequestPayloadIsInvalidArgumentAndServiceKeepsServing) {
  using hrpc_test::echo::Echo;
  ClientContext ctx;
  std::string response;
  // Field 2 (text) as a length-delimited field claiming 100 bytes that are not there.
  const std::string garbage("\x12\x64truncated", 11);
  Status s = channel_.CallRaw(Echo::kServiceId, MethodIdOf("Echo"), ctx, garbage, &response);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_EQ(s.message(), "malformed request payload for hrpc_test.echo.Echo.Echo");
  const std::string bad_wire_type("\x0f", 1);  // field 1, wire type 7 (invalid)
  EXPECT_EQ(channel_.CallRaw(Echo::kServiceId, MethodIdOf("Ping"), ctx, bad_wire_type, &response).code(),
            StatusCode::kInvalidArgument);
  // The same service still answers well-formed calls.
  Echo::Stub stub(&channel_);
  ClientContext ctx2;
  Empty e;
  ASSERT_TRUE(stub.Ping(ctx2, e, &e).ok());
  EXPECT_EQ(echo_.pings, 1);
}

TEST_F(StubTest, ExpiredDeadlineAndCancelledContext) {
  hrpc_test::echo::Echo::Stub stub(&channel_);
  Empty e;
  ClientContext expired;
  expired.set_deadline(ClientContext::Clock::now() - std::chrono::milliseconds(1));
  EXPECT_EQ(stub.Ping(expired, e, &e).code(), StatusCode::kDeadlineExceeded);
  ClientContext cancelled;
  cancelled.Cancel();
  EXPECT_EQ(stub.Ping(cancelled, e, &e).code(), StatusCode::kCancelled);
  EXPECT_EQ(echo_.pings, 0);
}

TEST_F(StubTest, DuplicateServiceIsRejected) {
  EchoImpl again;
  EXPECT_EQ(channel_.AddService(&again).code(), StatusCode::kAlreadyExists);
}

TEST_F(StubTest, ServiceExposesItsMethodTable) {
  Service& s = echo_;
  EXPECT_EQ(s.service_name(), "hrpc_test.echo.Echo");
  ASSERT_EQ(s.methods().size(), 2u);
  EXPECT_EQ(s.methods()[1].method_name, "Ping");
}

// Code under test that depends only on the stub interface.
std::string Shout(hrpc_test::echo::Echo::StubInterface& stub, const std::string& text) {
  ClientContext ctx;
  EchoRequest req;
  req.set_text(text);
  EchoResponse resp;
  Status s = stub.Echo(ctx, req, &resp);
  return s.ok() ? resp.text() + "!" : std::string(s.message());
}

TEST(MockStubTest, ExpectCallOnGeneratedMock) {
  hrpc_test::echo::MockEchoStub mock;
  EchoResponse canned;
  canned.set_text("hello");
  EXPECT_CALL(mock, Echo(_, _, _)).WillOnce(DoAll(SetArgPointee<2>(canned), Return(Status::Ok())))
      .WillOnce(Return(UnavailableError("peer gone")));
  EXPECT_EQ(Shout(mock, "ignored"), "hello!");
  EXPECT_EQ(Shout(mock, "ignored"), "peer gone");
}

TEST(MockStubTest, KeywordAndAsyncMethodsAreMockable) {
  hrpc_test::legacy::MockswitchStub mock;
  EXPECT_CALL(mock, deleteAsync(_, _, _, _)).WillOnce([](ClientContext&, const hrpc_test::legacy::delete_&,
                                                         hrpc_test::legacy::Ack* ack, DoneCallback done) {
    ack->set_ok(true);
    done(Status::Ok());
  });
  hrpc_test::legacy::switch_::StubInterface& iface = mock;
  ClientContext ctx;
  hrpc_test::legacy::delete_ req;
  hrpc_test::legacy::Ack ack;
  bool done_ok = false;
  iface.deleteAsync(ctx, req, &ack, [&](Status s) { done_ok = s.ok(); });
  EXPECT_TRUE(done_ok);
  EXPECT_TRUE(ack.ok());
}

}  // namespace
}  // namespace hrpc
