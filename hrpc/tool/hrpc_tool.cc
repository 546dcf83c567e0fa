// hrpc: the command-line client of any hrpc server.
//
//   hrpc list  URI                                   services and methods (hrpc.Reflection)
//   hrpc stats URI                                   the server's per-method stats
//   hrpc call  URI Service.Method ['{json}'] [--proto f.proto] [--attachment FILE]
//   hrpc press URI Service.Method ['{json}'] [--qps N] [--concurrency N] [--duration S]
//
// Requests are written in protobuf's JSON mapping and responses printed in it.
// The message types come from --proto files (parsed at run time) or, without
// --proto, from the .proto files the server's reflection service returns.
// Exit codes: 0 done; 1 the call or the connection failed; 2 bad usage (flags,
// JSON, .proto files, an unknown service or method).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>

#include "hrpc/reflection.hrpc.h"
#include "hrpc/rpc/load.h"
#include "hrpc/rpc/method.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/stats.h"

namespace {

namespace pb = google::protobuf;

// Where the protobuf well-known types (google/protobuf/*.proto) are installed.
#ifndef HRPC_PROTOBUF_INCLUDE_DIR
#define HRPC_PROTOBUF_INCLUDE_DIR "/usr/include"
#endif

constexpr int kFailed = 1;
constexpr int kUsage = 2;

// Usage errors (the user can fix the command line) exit 2, the rest 1.
int Report(const hrpc::Status& s) {
  std::fprintf(stderr, "hrpc: %s\n", s.ToString().c_str());
  const hrpc::StatusCode c = s.code();
  return c == hrpc::StatusCode::kInvalidArgument || c == hrpc::StatusCode::kNotFound ? kUsage : kFailed;
}

struct Common {
  std::string uri;
  double timeout_s = 10;
  std::string log_level = "warn";
};

std::chrono::nanoseconds Seconds(double s) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s));
}

class ProtoErrors final : public pb::compiler::MultiFileErrorCollector {
 public:
  void AddError(const std::string& file, int line, int column, const std::string& message) override {
    text += file + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message + "\n";
  }
  std::string text;
};

// The method to call: its protobuf descriptor (from --proto files or the
// server's reflection) and the wire identity built from it. Owns the pool the
// descriptors live in.
struct Target {
  std::unique_ptr<pb::compiler::DiskSourceTree> tree;
  std::unique_ptr<ProtoErrors> errors;
  std::unique_ptr<pb::compiler::Importer> importer;
  std::unique_ptr<pb::DescriptorPool> pool;
  const pb::MethodDescriptor* method = nullptr;
  hrpc::MethodDescriptor wire;
};

std::unique_ptr<hrpc::RpcChannel> OpenChannel(const std::string& uri, size_t workers, size_t connections,
                                              hrpc::Status* error) {
  hrpc::RpcChannelOptions o;
  o.runtime.workers = workers;
  o.runtime.name = "hrpc-cli";
  o.connections_per_worker = connections;
  auto ch = hrpc::RpcChannel::Create(uri, o);
  if (!ch.ok()) {
    *error = ch.status();
    return nullptr;
  }
  return std::move(*ch);
}

hrpc::Result<hrpc::ListServicesResponse> ListServices(hrpc::RpcChannel& channel, double timeout_s,
                                                      bool descriptors) {
  hrpc::Reflection::Stub stub(&channel);
  hrpc::ClientContext ctx;
  ctx.set_timeout(Seconds(timeout_s));
  hrpc::ListServicesRequest req;
  req.set_include_descriptors(descriptors);
  hrpc::ListServicesResponse resp;
  hrpc::Status s = stub.ListServices(ctx, req, &resp);
  if (!s.ok()) {
    return hrpc::Status(s.code(), "hrpc.Reflection.ListServices on " + channel.uri() + ": " + std::string(s.message()));
  }
  return resp;
}

// "pkg.Service.Method" or "pkg.Service/Method" -> ("pkg.Service", "Method").
hrpc::Result<std::pair<std::string, std::string>> SplitMethod(const std::string& name) {
  const size_t cut = name.find_last_of("./");
  if (cut == std::string::npos || cut == 0 || cut + 1 == name.size()) {
    return hrpc::InvalidArgumentError("'" + name + "' is not Service.Method (e.g. hrpc_examples.Echo.Echo)");
  }
  return std::make_pair(name.substr(0, cut), name.substr(cut + 1));
}

// The service named `name` in `files` (fully qualified, or by its bare name
// when exactly one service has it).
hrpc::Result<const pb::ServiceDescriptor*> FindService(const std::vector<const pb::FileDescriptor*>& files,
                                                       const std::string& name) {
  std::vector<const pb::ServiceDescriptor*> bare;
  std::string all;
  for (const pb::FileDescriptor* f : files) {
    for (int i = 0; i < f->service_count(); ++i) {
      const pb::ServiceDescriptor* sd = f->service(i);
      if (sd->full_name() == name) return sd;
      if (sd->name() == name) bare.push_back(sd);
      all += (all.empty() ? "" : ", ") + sd->full_name();
    }
  }
  if (bare.size() == 1) return bare[0];
  if (bare.size() > 1) return hrpc::InvalidArgumentError("service name '" + name + "' is ambiguous: qualify it");
  return hrpc::NotFoundError("no service '" + name + "' (known: " + (all.empty() ? "none" : all) + ")");
}

hrpc::Status ResolveMethod(Target& t, const pb::ServiceDescriptor* sd, const std::string& method) {
  t.method = sd->FindMethodByName(method);
  if (t.method == nullptr) {
    std::string names;
    for (int i = 0; i < sd->method_count(); ++i) names += (i ? ", " : "") + sd->method(i)->name();
    return hrpc::NotFoundError("service " + sd->full_name() + " has no method '" + method + "' (it has: " + names +
                               ")");
  }
  if (t.method->client_streaming() || t.method->server_streaming()) {
    return hrpc::InvalidArgumentError(t.method->full_name() + " is a streaming method; hrpc calls unary methods");
  }
  t.wire.service_name = sd->full_name();
  t.wire.method_name = t.method->name();
  t.wire.full_name = t.method->full_name();
  t.wire.service_id = hrpc::ServiceIdOf(t.wire.service_name);
  t.wire.method_id = hrpc::MethodIdOf(t.wire.method_name);
  return hrpc::Status::Ok();
}

// From .proto files parsed now: each is found under the -I directories, or
// else in its own directory; google/protobuf/*.proto always resolve.
hrpc::Status TargetFromProtos(Target& t, const std::vector<std::string>& protos,
                              const std::vector<std::string>& import_dirs, const std::string& service,
                              const std::string& method) {
  t.tree = std::make_unique<pb::compiler::DiskSourceTree>();
  t.errors = std::make_unique<ProtoErrors>();
  for (const std::string& dir : import_dirs) t.tree->MapPath("", dir);
  std::vector<std::string> virtual_names;
  for (const std::string& disk : protos) {
    std::string virtual_name, shadowing;
    if (t.tree->DiskFileToVirtualFile(disk, &virtual_name, &shadowing) !=
        pb::compiler::DiskSourceTree::SUCCESS) {
      const size_t slash = disk.find_last_of('/');
      t.tree->MapPath("", slash == std::string::npos ? "." : disk.substr(0, slash));
      virtual_name = slash == std::string::npos ? disk : disk.substr(slash + 1);
    }
    virtual_names.push_back(virtual_name);
  }
  t.tree->MapPath("", HRPC_PROTOBUF_INCLUDE_DIR);
  t.importer = std::make_unique<pb::compiler::Importer>(t.tree.get(), t.errors.get());
  std::vector<const pb::FileDescriptor*> files;
  for (size_t i = 0; i < protos.size(); ++i) {
    const pb::FileDescriptor* f = t.importer->Import(virtual_names[i]);
    if (f == nullptr) {
      return hrpc::InvalidArgumentError("cannot use " + protos[i] + ":\n" +
                                        (t.errors->text.empty() ? "file not found\n" : t.errors->text));
    }
    files.push_back(f);
  }
  HRPC_ASSIGN_OR_RETURN(const pb::ServiceDescriptor* sd, FindService(files, service));
  return ResolveMethod(t, sd, method);
}

// From the .proto files the server's hrpc.Reflection returns.
hrpc::Status TargetFromServer(Target& t, hrpc::RpcChannel& channel, double timeout_s, const std::string& service,
                              const std::string& method) {
  HRPC_ASSIGN_OR_RETURN(hrpc::ListServicesResponse list, ListServices(channel, timeout_s, true));
  t.pool = std::make_unique<pb::DescriptorPool>();
  std::vector<const pb::FileDescriptor*> files;
  for (const std::string& bytes : list.file_descriptors()) {
    pb::FileDescriptorProto proto;
    if (!proto.ParseFromString(bytes)) return hrpc::DataLossError("the server sent a .proto descriptor that does not parse");
    const pb::FileDescriptor* f = t.pool->BuildFile(proto);
    if (f == nullptr) return hrpc::DataLossError("the server's descriptor of " + proto.name() + " does not build");
    files.push_back(f);
  }
  auto sd = FindService(files, service);
  if (sd.ok()) return ResolveMethod(t, *sd, method);
  for (const hrpc::ServiceInfo& s : list.services()) {
    if (s.name() == service || s.name().ends_with("." + service)) {
      return hrpc::NotFoundError("the server serves " + s.name() +
                                 " but has no descriptor for it (a lite-runtime .proto?): pass --proto");
    }
  }
  std::string names;
  for (const hrpc::ServiceInfo& s : list.services()) names += (names.empty() ? "" : ", ") + s.name();
  return hrpc::NotFoundError("the server at " + channel.uri() + " serves no service '" + service +
                             "' (it serves: " + names + ")");
}

// The request from JSON (protobuf's JSON mapping; unknown fields refused).
hrpc::Result<std::unique_ptr<pb::Message>> ParseRequest(pb::DynamicMessageFactory& factory, const Target& t,
                                                        const std::string& json) {
  std::unique_ptr<pb::Message> req(factory.GetPrototype(t.method->input_type())->New());
  pb::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto st = pb::util::JsonStringToMessage(json, req.get(), opts);
  if (!st.ok()) {
    return hrpc::InvalidArgumentError("request is not a valid " + t.method->input_type()->full_name() +
                                      " in JSON: " + std::string(st.message()));
  }
  return req;
}

// The file's bytes in blocks of the channel's pool, read straight into them.
hrpc::Result<hrpc::mempool::IoBuf> ReadAttachment(hrpc::RpcChannel& channel, const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    return hrpc::InvalidArgumentError("--attachment " + path + ": " + std::strerror(err));
  }
  hrpc::mempool::IoBuf out;
  const size_t block = channel.pool().options().max_class_bytes;
  hrpc::Status status;
  for (size_t left = static_cast<size_t>(st.st_size); left > 0 && status.ok();) {
    auto b = channel.pool().Allocate(std::min(block, left));
    if (!b.ok()) {
      status = b.status();
      break;
    }
    size_t got = 0;
    while (got < b->size()) {
      const ssize_t n = ::read(fd, b->data() + got, b->size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) status = hrpc::InvalidArgumentError("--attachment " + path + ": " + std::strerror(errno));
      if (n == 0) status = hrpc::InvalidArgumentError("--attachment " + path + ": the file shrank while read");
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    left -= got;
    out.Append(std::move(*b));
  }
  ::close(fd);
  if (!status.ok()) return status;
  return out;
}

hrpc::Status WriteAttachment(const hrpc::mempool::IoBuf& data, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return hrpc::InvalidArgumentError("--save-attachment " + path + ": " + std::strerror(errno));
  bool ok = true;
  for (size_t i = 0; i < data.num_slices() && ok; ++i) {
    const auto& s = data.slice(i);
    ok = std::fwrite(s.data(), 1, s.size(), f) == s.size();
  }
  ok = std::fclose(f) == 0 && ok;
  if (!ok) return hrpc::InternalError("--save-attachment " + path + ": write failed");
  return hrpc::Status::Ok();
}

std::string ToJson(const pb::Message& m) {
  pb::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.always_print_primitive_fields = true;
  opts.preserve_proto_field_names = true;
  std::string out;
  if (auto st = pb::util::MessageToJsonString(m, &out, opts); !st.ok()) {
    return "<response not printable as JSON: " + std::string(st.message()) + ">\n";
  }
  if (out.empty() || out.back() != '\n') out += '\n';
  return out;
}

struct CallArgs {
  std::string method, json = "{}", attachment, save_attachment;
  std::vector<std::string> protos, import_dirs;
};

// Resolves the method and parses the request; fills *channel.
hrpc::Status Prepare(const Common& c, const CallArgs& a, size_t workers, size_t connections, Target& t,
                     pb::DynamicMessageFactory& factory, std::unique_ptr<hrpc::RpcChannel>* channel,
                     std::unique_ptr<pb::Message>* request) {
  HRPC_ASSIGN_OR_RETURN(auto names, SplitMethod(a.method));
  hrpc::Status s;
  *channel = OpenChannel(c.uri, workers, connections, &s);
  if (!*channel) return s;
  if (!a.protos.empty()) {
    HRPC_TRY(TargetFromProtos(t, a.protos, a.import_dirs, names.first, names.second));
  } else {
    HRPC_TRY(TargetFromServer(t, **channel, c.timeout_s, names.first, names.second));
  }
  HRPC_ASSIGN_OR_RETURN(*request, ParseRequest(factory, t, a.json));
  return hrpc::Status::Ok();
}

int RunCall(const Common& c, const CallArgs& a) {
  Target t;
  pb::DynamicMessageFactory factory;
  std::unique_ptr<hrpc::RpcChannel> channel;
  std::unique_ptr<pb::Message> req;
  if (hrpc::Status s = Prepare(c, a, 1, 1, t, factory, &channel, &req); !s.ok()) return Report(s);
  hrpc::ClientContext ctx;
  ctx.set_timeout(Seconds(c.timeout_s));
  if (!a.attachment.empty()) {
    auto att = ReadAttachment(*channel, a.attachment);
    if (!att.ok()) return Report(att.status());
    ctx.request_attachment() = std::move(*att);
  }
  std::unique_ptr<pb::Message> resp(factory.GetPrototype(t.method->output_type())->New());
  hrpc::Status s = channel->CallMethod(t.wire, ctx, *req, resp.get());
  if (!s.ok()) {
    std::fprintf(stderr, "hrpc: %s on %s: %s\n", std::string(t.wire.full_name).c_str(), channel->uri().c_str(),
                 s.ToString().c_str());
    return kFailed;
  }
  std::fputs(ToJson(*resp).c_str(), stdout);
  const hrpc::mempool::IoBuf& back = ctx.response_attachment();
  if (!a.save_attachment.empty()) {
    if (hrpc::Status w = WriteAttachment(back, a.save_attachment); !w.ok()) return Report(w);
    std::fprintf(stderr, "hrpc: response attachment: %zu bytes written to %s\n", back.size(),
                 a.save_attachment.c_str());
  } else if (!back.empty()) {
    std::fprintf(stderr, "hrpc: response attachment: %zu bytes (--save-attachment FILE keeps them)\n", back.size());
  }
  return 0;
}

struct PressArgs {
  double qps = 0, duration_s = 10, warmup_s = 1;
  size_t concurrency = 8, workers = 1, connections = 1;
  bool progress = true;
};

int RunPress(const Common& c, const CallArgs& a, const PressArgs& p) {
  Target t;
  pb::DynamicMessageFactory factory;
  std::unique_ptr<hrpc::RpcChannel> channel;
  std::unique_ptr<pb::Message> req;
  if (hrpc::Status s = Prepare(c, a, p.workers, p.connections, t, factory, &channel, &req); !s.ok()) return Report(s);
  hrpc::mempool::IoBuf attachment;
  if (!a.attachment.empty()) {
    auto att = ReadAttachment(*channel, a.attachment);
    if (!att.ok()) return Report(att.status());
    attachment = std::move(*att);
  }
  // One serialized request for every call; responses are not parsed.
  const std::string request = req->SerializeAsString();
  if (hrpc::Status s = channel->Connect(); !s.ok()) return Report(s);
  hrpc::LoadOptions lo;
  lo.coroutines_per_worker = p.concurrency;
  lo.qps = p.qps;
  lo.warmup = std::chrono::duration<double>(p.warmup_s);
  lo.duration = std::chrono::duration<double>(p.duration_s);
  lo.progress = p.progress;
  lo.label = "[" + std::string(t.wire.full_name) + " " + channel->uri() + "]";
  lo.bytes_per_call = attachment.size();
  const std::chrono::nanoseconds timeout = Seconds(c.timeout_s);
  hrpc::RpcChannel& ch = *channel;
  const hrpc::MethodDescriptor& m = t.wire;
  hrpc::LoadResult r = hrpc::RunLoad(ch, lo, [&](hrpc::ClientContext& ctx) {
    ctx.set_timeout(timeout);
    if (!attachment.empty()) ctx.request_attachment() = attachment.Share();
    std::string response;
    return ch.CallRaw(m.service_id, m.method_id, m.full_name, ctx, request, &response);
  });
  std::printf("%-32s %9s %6s %10s %8s %8s %10s %9s %9s %9s %9s %9s %6s\n", "method", "qps", "conc", "calls",
              "errors", "seconds", "rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "cli%");
  std::printf("%-32s %9.0f %6zu %10llu %8llu %8.2f %10.1f %9.1f %9.1f %9.1f %9.1f %9.1f %6.0f\n",
              std::string(t.wire.full_name).c_str(), p.qps, p.concurrency * channel->num_workers(),
              static_cast<unsigned long long>(r.calls), static_cast<unsigned long long>(r.errors), r.seconds, r.rps,
              r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us, r.client_cpu_pct);
  if (!r.first_error.empty()) std::printf("first error: %s\n", r.first_error.c_str());
  return r.errors == 0 && r.calls > 0 ? 0 : kFailed;
}

int RunList(const Common& c) {
  hrpc::Status s;
  auto channel = OpenChannel(c.uri, 1, 1, &s);
  if (!channel) return Report(s);
  auto list = ListServices(*channel, c.timeout_s, false);
  if (!list.ok()) return Report(list.status());
  for (const hrpc::ServiceInfo& svc : list->services()) {
    std::printf("%s  (id 0x%08x%s%s)\n", svc.name().c_str(), svc.service_id(), svc.proto_file().empty() ? "" : ", ",
                svc.proto_file().c_str());
    for (const hrpc::MethodInfo& m : svc.methods()) {
      if (m.input_type().empty()) {
        std::printf("  rpc %s  (id 0x%08x)\n", m.name().c_str(), m.method_id());
      } else {
        std::printf("  rpc %s(%s%s) returns (%s%s)\n", m.name().c_str(), m.client_streaming() ? "stream " : "",
                    m.input_type().c_str(), m.server_streaming() ? "stream " : "", m.output_type().c_str());
      }
    }
  }
  return 0;
}

int RunStats(const Common& c) {
  hrpc::Status s;
  auto channel = OpenChannel(c.uri, 1, 1, &s);
  if (!channel) return Report(s);
  hrpc::Reflection::Stub stub(channel.get());
  hrpc::ClientContext ctx;
  ctx.set_timeout(Seconds(c.timeout_s));
  hrpc::GetStatsResponse resp;
  s = stub.GetStats(ctx, hrpc::GetStatsRequest(), &resp);
  if (!s.ok()) return Report(hrpc::Status(s.code(), "hrpc.Reflection.GetStats on " + channel->uri() + ": " + std::string(s.message())));
  std::vector<hrpc::MethodStats> stats;
  for (const hrpc::MethodCallStats& m : resp.methods()) {
    hrpc::MethodStats ms;
    ms.method = m.method();
    ms.count = m.count();
    ms.errors = m.errors();
    ms.in_flight = m.in_flight();
    ms.bytes_in = m.bytes_in();
    ms.bytes_out = m.bytes_out();
    ms.mean_us = m.mean_us();
    ms.p50_us = m.p50_us();
    ms.p99_us = m.p99_us();
    ms.p999_us = m.p999_us();
    ms.max_us = m.max_us();
    stats.push_back(std::move(ms));
  }
  std::printf("%s (up %.1f s)\n%s", channel->uri().c_str(), static_cast<double>(resp.uptime_ns()) / 1e9,
              hrpc::FormatStatsTable(stats).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("hrpc: call, list, load and inspect hrpc servers.\n"
               "URI: host:port (transport by HRPC_TRANSPORT, else RDMA when a device exists, else TCP), "
               "tcp://host:port, rdma://host:port.\nExit codes: 0 done, 1 the call failed, 2 bad usage.",
               "hrpc");
  app.fallthrough();  // --timeout and --log also after the command
  app.require_subcommand(0, 1);  // none is reported after parsing, so that a bad flag is named first
  Common c;
  app.add_option("--log", c.log_level, "log level")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "err", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--timeout", c.timeout_s, "seconds each call may take")->check(CLI::PositiveNumber)
      ->capture_default_str();

  CallArgs a;
  PressArgs p;
  auto add_target = [&](CLI::App* sub) {
    sub->add_option("uri", c.uri, "the server")->required();
    sub->add_option("method", a.method, "Service.Method, the service fully qualified (pkg.Service) or bare")
        ->required();
    sub->add_option("json", a.json, "the request in protobuf's JSON mapping")->capture_default_str();
    sub->add_option("--proto", a.protos, "a .proto file defining the service (repeat for more); default: ask the server")
        ->check(CLI::ExistingFile)
        ->allow_extra_args(false);
    sub->add_option("-I,--import-path", a.import_dirs, "a directory that imports are relative to (repeatable)")
        ->check(CLI::ExistingDirectory)
        ->allow_extra_args(false);
    sub->add_option("--attachment", a.attachment, "send this file's bytes as the request attachment")
        ->check(CLI::ExistingFile);
  };
  CLI::App* call = app.add_subcommand("call", "call one method and print the response as JSON");
  add_target(call);
  call->add_option("--save-attachment", a.save_attachment, "write the response attachment to this file");

  CLI::App* press = app.add_subcommand("press", "load a method: a live progress line, then rps and latency");
  add_target(press);
  press->add_option("--qps", p.qps, "calls per second in all; 0: as fast as responses come back")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  press->add_option("--concurrency", p.concurrency, "calls in flight per worker")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  press->add_option("--duration", p.duration_s, "seconds to measure")->check(CLI::PositiveNumber)
      ->capture_default_str();
  press->add_option("--warmup", p.warmup_s, "seconds of load before measuring")->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  press->add_option("--workers", p.workers, "client threads")->check(CLI::Range(1, 256))->capture_default_str();
  press->add_option("--connections", p.connections, "connections per worker")->check(CLI::Range(1, 1024))
      ->capture_default_str();
  press->add_flag("--progress,!--no-progress", p.progress, "a live progress line on stderr")->capture_default_str();

  CLI::App* list = app.add_subcommand("list", "list the server's services and methods");
  list->add_option("uri", c.uri, "the server")->required();
  CLI::App* stats = app.add_subcommand("stats", "print the server's per-method stats");
  stats->add_option("uri", c.uri, "the server")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kUsage;  // --help is a ParseError with exit code 0
  }
  if (app.get_subcommands().empty()) {
    std::fprintf(stderr, "hrpc: a command is needed: call, press, list or stats (see --help)\n");
    return kUsage;
  }
  spdlog::set_level(spdlog::level::from_str(c.log_level));
  if (call->parsed()) return RunCall(c, a);
  if (press->parsed()) return RunPress(c, a, p);
  if (list->parsed()) return RunList(c);
  return RunStats(c);
}
