// echo_client: calls hrpc_examples.Echo a few times (optionally with an
// attachment) and prints the answers and the client-side stats.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "common/cli.h"

#include <spdlog/spdlog.h>
#include "echo/echo.hrpc.h"
#include "hrpc/base/crc32c.h"
#include "hrpc/rpc/rpc_channel.h"

int main(int argc, char** argv) {
  std::string uri = "127.0.0.1:7000", text = "hello, hrpc";
  uint64_t count = 3, attachment = 0, timeout_ms = 5000;
  bool echo_attachment = true;
  bool chat = false;
  CLI::App app("Calls hrpc_examples.Echo/Echo --count times and prints what comes back, then the\n"
               "client's per-method stats. Attachments above 16 KiB travel by one-sided READ\n"
               "(request) and WRITE (response) instead of inline.",
               "echo_client");
  app.add_option("--uri", uri, "server: host:port, tcp://host:port, rdma://host:port")->capture_default_str();
  app.add_option("--text", text, "text to echo")->capture_default_str();
  app.add_option("--count", count, "calls to make (messages, with --chat)")->capture_default_str();
  app.add_flag("--chat", chat, "send the messages over one bidirectional Chat stream");
  hrpc::examples::AddSize(app, "--attachment", &attachment, "bytes of request attachment (e.g. 4K, 1M)");
  app.add_flag("--echo_attachment", echo_attachment,
               "ask the server to send the attachment back (on by default; --echo_attachment=false turns it off)");
  app.add_option("--timeout_ms", timeout_ms, "deadline per call")->capture_default_str();
  std::string log_level = "warn";
  hrpc::examples::AddLogLevel(app, &log_level);
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code, &log_level)) return code;

  auto channel = hrpc::RpcChannel::Create(uri);
  if (!channel.ok()) {
    std::fprintf(stderr, "echo_client: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  hrpc_examples::Echo::Stub stub(channel->get());
  int failures = 0;
  if (chat) {
    // One bidirectional stream: `count` messages out, each echoed back.
    hrpc::ClientContext ctx;
    ctx.set_timeout(std::chrono::milliseconds(timeout_ms) * static_cast<int64_t>(std::max<uint64_t>(count, 1)));
    auto stream = stub.Chat(ctx);
    for (uint64_t i = 0; i < count; ++i) {
      hrpc_examples::EchoRequest req;
      req.set_text(text + " #" + std::to_string(i));
      req.set_echo_attachment(echo_attachment);
      hrpc::mempool::IoBuf att;
      if (attachment > 0) {
        auto buf = (*channel)->pool().Allocate(attachment);
        if (!buf.ok()) break;
        for (uint64_t j = 0; j < attachment; ++j) buf->data()[j] = static_cast<char>('a' + (i + j) % 26);
        att = hrpc::mempool::IoBuf(std::move(*buf));
      }
      const uint32_t crc = att.Crc32c();
      if (!stream->Write(req, std::move(att))) break;
      hrpc_examples::EchoResponse resp;
      hrpc::mempool::IoBuf back;
      if (!stream->Read(&resp, &back)) break;
      std::printf("chat %llu: \"%s\"; server got %llu attachment bytes", static_cast<unsigned long long>(i),
                  resp.text().c_str(), static_cast<unsigned long long>(resp.attachment_bytes()));
      if (echo_attachment && attachment > 0) {
        const bool same = back.size() == attachment && back.Crc32c() == crc;
        std::printf("; echoed back %zu bytes, crc %s", back.size(), same ? "ok" : "MISMATCH");
        if (!same) ++failures;
      }
      std::printf("\n");
    }
    stream->WritesDone();
    hrpc::Status s = stream->Finish();
    std::printf("chat ended: %s\n", s.ToString().c_str());
    if (!s.ok()) ++failures;
    std::printf("\n%s", hrpc::FormatStatsTable((*channel)->Stats()).c_str());
    return failures == 0 ? 0 : 1;
  }
  for (uint64_t i = 0; i < count; ++i) {
    hrpc::ClientContext ctx;
    ctx.set_timeout(std::chrono::milliseconds(timeout_ms));
    uint32_t crc = 0;
    if (attachment > 0) {
      auto buf = (*channel)->pool().Allocate(attachment);
      if (!buf.ok()) {
        std::fprintf(stderr, "echo_client: %s\n", buf.status().ToString().c_str());
        return 1;
      }
      for (uint64_t j = 0; j < attachment; ++j) buf->data()[j] = static_cast<char>('a' + (i + j) % 26);
      crc = hrpc::Crc32c(buf->data(), attachment);
      ctx.request_attachment() = hrpc::mempool::IoBuf(std::move(*buf));
      if (echo_attachment) ctx.set_response_attachment_capacity(attachment);
    }
    hrpc_examples::EchoRequest req;
    req.set_text(text + " #" + std::to_string(i));
    req.set_echo_attachment(echo_attachment);
    hrpc_examples::EchoResponse resp;
    const auto t0 = std::chrono::steady_clock::now();
    hrpc::Status s = stub.Echo(ctx, req, &resp);
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    if (!s.ok()) {
      ++failures;
      std::printf("call %llu: %s\n", static_cast<unsigned long long>(i), s.ToString().c_str());
      continue;
    }
    std::printf("call %llu: \"%s\" from %s in %.1f us; server got %llu attachment bytes", static_cast<unsigned long long>(i),
                resp.text().c_str(), std::string(ctx.peer()).c_str(), us,
                static_cast<unsigned long long>(resp.attachment_bytes()));
    if (echo_attachment && attachment > 0) {
      const bool same = ctx.response_attachment().size() == attachment && ctx.response_attachment().Crc32c() == crc;
      std::printf("; echoed back %zu bytes, crc %s", ctx.response_attachment().size(), same ? "ok" : "MISMATCH");
      if (!same) ++failures;
    }
    std::printf("\n");
  }
  std::printf("\n%s", hrpc::FormatStatsTable((*channel)->Stats()).c_str());
  return failures == 0 ? 0 : 1;
}
