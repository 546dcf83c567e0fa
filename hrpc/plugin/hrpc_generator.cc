#include "hrpc_generator.h"

#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include <google/protobuf/compiler/cpp/names.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/io/printer.h>
#include <google/protobuf/io/zero_copy_stream.h>

#include "hrpc/rpc/method.h"

namespace hrpc::plugin {
namespace {

namespace pb = google::protobuf;
using Vars = std::map<std::string, std::string>;

// protobuf's keyword list (src/google/protobuf/compiler/cpp/helpers.cc), plus
// the C++20 additions, so hrpc renames exactly what protobuf renames and more.
const std::unordered_set<std::string>& Keywords() {
  static const std::unordered_set<std::string> kKeywords = {
      "NULL", "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break", "case",
      "catch", "char", "char8_t", "char16_t", "char32_t", "class", "compl", "concept", "const", "consteval",
      "constexpr", "constinit", "const_cast", "continue", "co_await", "co_return", "co_yield", "decltype",
      "default", "delete", "do", "double", "dynamic_cast", "else", "enum", "explicit", "export", "extern",
      "false", "float", "for", "friend", "goto", "if", "inline", "int", "long", "mutable", "namespace", "new",
      "noexcept", "not", "not_eq", "nullptr", "operator", "or", "or_eq", "private", "protected", "public",
      "register", "reinterpret_cast", "requires", "return", "short", "signed", "sizeof", "static",
      "static_assert", "static_cast", "struct", "switch", "template", "this", "thread_local", "throw", "true",
      "try", "typedef", "typeid", "typename", "union", "unsigned", "using", "virtual", "void", "volatile",
      "wchar_t", "while", "xor", "xor_eq"};
  return kKeywords;
}

// Names the generated classes use for themselves; a method with one of these
// names would collide with them.
const std::set<std::string>& ReservedMemberNames() {
  static const std::set<std::string> kReserved = {
      "Service", "Stub", "StubInterface", "kServiceName", "kServiceId", "kMethods", "CallMethod",
      "service_name", "service_id", "methods", "channel_"};
  return kReserved;
}

std::string Hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08xu", v);
  return buf;
}

std::vector<std::string> SplitPackage(const std::string& package) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : package) {
    if (c == '.') {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) parts.push_back(cur);
  return parts;
}

// C++ namespace of a file's generated code: the package with '.' -> '::',
// exactly as protobuf places the messages (protobuf does not rename keyword
// package components either; such a package does not compile with protoc's
// C++ output in the first place).
//
// A file with `option cc_generic_services = true` (as files written for brpc
// have) also gets protoc's own service classes, named after each service in
// that namespace: hrpc's then go one level down, in `hrpc_services`
// (pkg::hrpc_services::Kv::Stub beside protoc's pkg::Kv and pkg::Kv_Stub).
inline constexpr const char* kGenericServicesNamespace = "hrpc_services";

std::vector<std::string> NamespaceParts(const pb::FileDescriptor* file) {
  std::vector<std::string> parts = SplitPackage(file->package());
  if (file->options().cc_generic_services()) parts.push_back(kGenericServicesNamespace);
  return parts;
}

std::string QualifiedNamespace(const pb::FileDescriptor* file) {
  std::string ns;
  for (const std::string& part : NamespaceParts(file)) ns += "::" + part;
  return ns;
}

enum class Kind { kUnary, kClientStreaming, kServerStreaming, kBidiStreaming };

struct MethodNames {
  const pb::MethodDescriptor* method;
  Kind kind = Kind::kUnary;
  std::string cpp;     // member name of the handler / sync call
  std::string async;   // <name>Async
  std::string future;  // <name>Future
  std::string request_type;
  std::string response_type;
  uint32_t id;
  size_t index;
};

struct ServiceNames {
  const pb::ServiceDescriptor* service;
  std::string cpp;        // holder class, e.g. Echo (keyword-resolved)
  std::string qualified;  // ::pkg::Echo
  std::string mock;       // MockEchoStub
  uint32_t id;
  std::vector<MethodNames> methods;
};

// Every problem is appended to `errors` (one line each), so that a file with
// several is refused naming all of them at once.
void BuildService(const pb::ServiceDescriptor* service, ServiceNames* out, std::vector<std::string>* errors) {
  out->service = service;
  out->cpp = ResolveKeyword(service->name());
  out->qualified = QualifiedNamespace(service->file()) + "::" + out->cpp;
  out->mock = "Mock" + service->name() + "Stub";
  out->id = ServiceIdOf(service->full_name());
  std::map<std::string, std::string> member_owner;  // generated member -> proto method
  std::map<uint32_t, std::string> ids;
  for (int i = 0; i < service->method_count(); ++i) {
    const pb::MethodDescriptor* m = service->method(i);
    MethodNames mn;
    mn.method = m;
    mn.kind = m->client_streaming() && m->server_streaming() ? Kind::kBidiStreaming
              : m->client_streaming()                        ? Kind::kClientStreaming
              : m->server_streaming()                        ? Kind::kServerStreaming
                                                             : Kind::kUnary;
    mn.cpp = ResolveKeyword(m->name());
    mn.async = m->name() + "Async";
    mn.future = m->name() + "Future";
    mn.request_type = pb::compiler::cpp::QualifiedClassName(m->input_type());
    mn.response_type = pb::compiler::cpp::QualifiedClassName(m->output_type());
    mn.id = MethodIdOf(m->name());
    mn.index = static_cast<size_t>(i);
    // A streaming method generates one member; a unary one three.
    std::vector<const std::string*> members = {&mn.cpp};
    if (mn.kind == Kind::kUnary) members = {&mn.cpp, &mn.async, &mn.future};
    for (const std::string* name : members) {
      if (ReservedMemberNames().count(*name) != 0 || *name == out->mock) {
        errors->push_back("method " + m->full_name() + " generates member " + *name +
                          ", a name hrpc reserves in generated classes; rename the method");
        continue;
      }
      auto [it, inserted] = member_owner.emplace(*name, m->name());
      if (!inserted) {
        errors->push_back("methods " + it->second + " and " + m->name() + " of service " + service->full_name() +
                          " both generate the C++ member " + *name + "; rename one");
      }
    }
    auto [it, inserted] = ids.emplace(mn.id, m->name());
    if (!inserted) {
      errors->push_back("methods " + it->second + " and " + m->name() + " of service " + service->full_name() +
                        " hash to the same method id " + Hex(mn.id) + "; rename one");
    }
    out->methods.push_back(std::move(mn));
  }
}

// The C++ class names protobuf generates for `message` and everything nested
// in it (Outer, Outer_Inner, Outer_Inner_Kind, ...).
void AddGeneratedNames(const pb::Descriptor* message, std::map<std::string, std::string>* taken) {
  taken->emplace(pb::compiler::cpp::ClassName(message), message->full_name());
  for (int i = 0; i < message->nested_type_count(); ++i) AddGeneratedNames(message->nested_type(i), taken);
  for (int i = 0; i < message->enum_type_count(); ++i) {
    taken->emplace(pb::compiler::cpp::ClassName(message->enum_type(i)), message->enum_type(i)->full_name());
  }
}

// The namespace-level C++ names protobuf generates for `file`: messages,
// nested ones flattened (Outer.Inner is Outer_Inner), and enums; each mapped
// to what generates it.
void AddFileNames(const pb::FileDescriptor* file, std::map<std::string, std::string>* taken) {
  std::map<std::string, std::string> names;
  for (int i = 0; i < file->message_type_count(); ++i) AddGeneratedNames(file->message_type(i), &names);
  for (int i = 0; i < file->enum_type_count(); ++i) {
    names.emplace(pb::compiler::cpp::ClassName(file->enum_type(i)), file->enum_type(i)->full_name());
  }
  for (auto& [cpp, proto] : names) taken->emplace(cpp, "protobuf also generates for " + proto + " in " + file->name());
}

// Files `file` imports, directly or not, that share its package: their
// messages live in the same C++ namespace.
void AddSamePackageImports(const pb::FileDescriptor* file, const std::string& package,
                           std::set<const pb::FileDescriptor*>* seen, std::map<std::string, std::string>* taken) {
  for (int i = 0; i < file->dependency_count(); ++i) {
    const pb::FileDescriptor* dep = file->dependency(i);
    if (!seen->insert(dep).second) continue;
    if (dep->package() == package) AddFileNames(dep, taken);
    AddSamePackageImports(dep, package, seen, taken);
  }
}

void CheckFile(const pb::FileDescriptor* file, const std::vector<ServiceNames>& services,
               std::vector<std::string>* errors) {
  if (services.empty()) return;
  // C++ name in the services' namespace -> what else generates it there.
  std::map<std::string, std::string> taken;
  if (!file->options().cc_generic_services()) {  // else hrpc's classes go one namespace down
    AddFileNames(file, &taken);
    std::set<const pb::FileDescriptor*> seen{file};
    AddSamePackageImports(file, file->package(), &seen, &taken);
  }
  // The holder class of a service nests these: a service of that name would
  // hold a member named like itself.
  static const std::set<std::string> kHolderMembers = {"Service",     "StubInterface", "Stub",
                                                       "kServiceName", "kServiceId",   "kMethods"};
  std::map<uint32_t, std::string> ids;
  for (const ServiceNames& s : services) {
    if (kHolderMembers.count(s.cpp) != 0) {
      errors->push_back("service " + s.service->full_name() + " generates the C++ class " + s.cpp +
                        ", a name hrpc reserves for a member of each service's class; rename the service");
    }
    for (const std::string* name : {&s.cpp, &s.mock}) {
      if (auto it = taken.find(*name); it != taken.end()) {
        errors->push_back("service " + s.service->full_name() + " generates the C++ class " + *name + ", which " +
                          it->second + "; rename one");
      }
    }
    for (const std::string* name : {&s.cpp, &s.mock}) {
      taken.emplace(*name, "service " + s.service->full_name() + " also generates");
    }
    auto [it, inserted] = ids.emplace(s.id, s.service->full_name());
    if (!inserted) {
      errors->push_back("services " + it->second + " and " + s.service->full_name() +
                        " hash to the same service id " + Hex(s.id) + "; rename one");
    }
  }
}

void OpenNamespace(pb::io::Printer& p, const pb::FileDescriptor* file) {
  for (const std::string& part : NamespaceParts(file)) p.Print("namespace $ns$ {\n", "ns", part);
  p.Print("\n");
}
void CloseNamespace(pb::io::Printer& p, const pb::FileDescriptor* file) {
  std::vector<std::string> parts = NamespaceParts(file);
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) p.Print("}  // namespace $ns$\n", "ns", *it);
}

Vars MethodVars(const ServiceNames& s, const MethodNames& m) {
  return {{"svc", s.qualified},
          {"Svc", s.cpp},
          {"Method", m.cpp},
          {"MethodAsync", m.async},
          {"MethodFuture", m.future},
          {"Req", m.request_type},
          {"Resp", m.response_type},
          {"index", std::to_string(m.index)},
          {"method_id", Hex(m.id)},
          {"proto_name", m.method->name()},
          {"full_name", m.method->full_name()}};
}

void GenerateHeader(pb::io::Printer& p, const pb::FileDescriptor* file, const std::string& base,
                    const std::vector<ServiceNames>& services) {
  p.Print(
      "// Generated by protoc-gen-hrpc from $file$. DO NOT EDIT.\n"
      "#pragma once\n\n"
      "#include <array>\n"
      "#include <cstdint>\n"
      "#include <memory>\n"
      "#include <span>\n"
      "#include <string_view>\n\n"
      "#include \"hrpc/rpc/channel.h\"\n"
      "#include \"hrpc/rpc/client_context.h\"\n"
      "#include \"hrpc/rpc/method.h\"\n"
      "#include \"hrpc/rpc/server_context.h\"\n"
      "#include \"hrpc/rpc/service.h\"\n"
      "#include \"hrpc/rpc/stream.h\"\n"
      "#include \"$base$.pb.h\"\n\n",
      "file", file->name(), "base", base);
  if (services.empty()) {
    p.Print("// $file$ declares no services.\n", "file", file->name());
    return;
  }
  OpenNamespace(p, file);
  for (const ServiceNames& s : services) {
    Vars v = {{"Svc", s.cpp},
              {"svc", s.qualified},
              {"Mock", s.mock},
              {"base", base},
              {"full", s.service->full_name()},
              {"id", Hex(s.id)},
              {"n", std::to_string(s.methods.size())}};
    p.Print(v,
            "// service $full$: ids, method table and the three classes below.\n"
            "class $Svc$ final {\n"
            " public:\n"
            "  static constexpr std::string_view kServiceName = \"$full$\";\n"
            "  static constexpr uint32_t kServiceId = $id$;  // ::hrpc::ServiceIdOf(kServiceName)\n"
            "  // In .proto declaration order.\n"
            "  static constexpr std::array<::hrpc::MethodDescriptor, $n$> kMethods = {{\n");
    for (const MethodNames& m : s.methods) {
      Vars mv = MethodVars(s, m);
      mv["full"] = s.service->full_name();
      mv["sid"] = Hex(s.id);
      // protobuf's own method option: `option idempotency_level = IDEMPOTENT;`
      // (or NO_SIDE_EFFECTS) marks a method a cluster channel may retry.
      mv["idempotent"] =
          m.method->options().idempotency_level() != pb::MethodOptions::IDEMPOTENCY_UNKNOWN ? "true" : "false";
      p.Print(mv, "      {\"$full$\", \"$proto_name$\", \"$full_name$\", $sid$, $method_id$, $idempotent$},\n");
    }
    p.Print(v,
            "  }};\n\n"
            "  class Service;        // derive and implement the handlers\n"
            "  class StubInterface;  // what clients call; $Mock$ in $base$.hrpc.mock.h mocks it\n"
            "  class Stub;           // StubInterface over an ::hrpc::Channel\n\n"
            "  $Svc$() = delete;\n"
            "};\n"
            "static_assert(::hrpc::ServiceIdOf($svc$::kServiceName) == $svc$::kServiceId);\n\n");

    // Service.
    p.Print(v,
            "// Server side of $full$. Handlers run concurrently on the server's\n"
            "// workers, each in its own coroutine; they may suspend (bulk pulls, disk,\n"
            "// other RPCs). Return OK after filling *response, or an error Status that\n"
            "// the client receives as is (code and message).\n"
            "class $Svc$::Service : public ::hrpc::Service {\n"
            " public:\n"
            "  std::string_view service_name() const noexcept final { return $svc$::kServiceName; }\n"
            "  uint32_t service_id() const noexcept final { return $svc$::kServiceId; }\n"
            "  std::span<const ::hrpc::MethodDescriptor> methods() const noexcept final { return $svc$::kMethods; }\n"
            "  ::hrpc::Status CallMethod(uint32_t method_id, ::hrpc::ServerContext& ctx, std::string_view request,\n"
            "                            ::hrpc::ResponseWriter& response) final;\n"
            "  ::hrpc::Status CallStream(uint32_t method_id, ::hrpc::ServerContext& ctx,\n"
            "                            ::hrpc::ServerStreamBase& stream) final;\n\n");
    for (const MethodNames& m : s.methods) {
      switch (m.kind) {
        case Kind::kUnary:
          p.Print(MethodVars(s, m),
                  "  // rpc $proto_name$\n"
                  "  virtual ::hrpc::Status $Method$(::hrpc::ServerContext& ctx, const $Req$& request,\n"
                  "                                  $Resp$* response) = 0;\n");
          break;
        case Kind::kClientStreaming:
          p.Print(MethodVars(s, m),
                  "  // rpc $proto_name$(stream $Req$): read until Read() is false, fill *response\n"
                  "  // (ctx.response_attachment() goes with it).\n"
                  "  virtual ::hrpc::Status $Method$(::hrpc::ServerContext& ctx, ::hrpc::ServerReader<$Req$>* reader,\n"
                  "                                  $Resp$* response) = 0;\n");
          break;
        case Kind::kServerStreaming:
          p.Print(MethodVars(s, m),
                  "  // rpc $proto_name$ returns (stream $Resp$): the request's attachment is\n"
                  "  // ctx.request_attachment().\n"
                  "  virtual ::hrpc::Status $Method$(::hrpc::ServerContext& ctx, const $Req$& request,\n"
                  "                                  ::hrpc::ServerWriter<$Resp$>* writer) = 0;\n");
          break;
        case Kind::kBidiStreaming:
          p.Print(MethodVars(s, m),
                  "  // rpc $proto_name$(stream $Req$) returns (stream $Resp$)\n"
                  "  virtual ::hrpc::Status $Method$(::hrpc::ServerContext& ctx,\n"
                  "                                  ::hrpc::ServerReaderWriter<$Resp$, $Req$>* stream) = 0;\n");
          break;
      }
    }
    p.Print("};\n\n");

    // StubInterface.
    p.Print(v,
            "// Client side of $full$. Per method: a call that suspends the calling\n"
            "// coroutine (or blocks a plain thread), an async call with a callback, and\n"
            "// a Future. ctx (and *response for the async form) must outlive the call.\n"
            "class $Svc$::StubInterface {\n"
            " public:\n"
            "  virtual ~StubInterface() = default;\n");
    for (const MethodNames& m : s.methods) {
      switch (m.kind) {
        case Kind::kUnary:
          p.Print(MethodVars(s, m),
                  "  // rpc $proto_name$\n"
                  "  virtual ::hrpc::Status $Method$(::hrpc::ClientContext& ctx, const $Req$& request,\n"
                  "                                  $Resp$* response) = 0;\n"
                  "  virtual void $MethodAsync$(::hrpc::ClientContext& ctx, const $Req$& request,\n"
                  "                             $Resp$* response, ::hrpc::DoneCallback done) = 0;\n"
                  "  virtual ::hrpc::coro::Future<$Resp$> $MethodFuture$(::hrpc::ClientContext& ctx,\n"
                  "                                                      const $Req$& request) = 0;\n");
          break;
        case Kind::kClientStreaming:
          p.Print(MethodVars(s, m),
                  "  // rpc $proto_name$(stream $Req$): Write()s, then Finish() fills *response\n"
                  "  // (its attachment: ctx.response_attachment()).\n"
                  "  virtual std::unique_ptr<::hrpc::ClientWriter<$Req$, $Resp$>> $Method$(::hrpc::ClientContext& ctx,\n"
                  "                                                                    $Resp$* response) = 0;\n");
          break;
        case Kind::kServerStreaming:
          p.Print(MethodVars(s, m),
                  "  // rpc $proto_name$ returns (stream $Resp$): sends `request` with\n"
                  "  // ctx.request_attachment(); Read() until false, then Finish().\n"
                  "  virtual std::unique_ptr<::hrpc::ClientReader<$Resp$>> $Method$(::hrpc::ClientContext& ctx,\n"
                  "                                                           const $Req$& request) = 0;\n");
          break;
        case Kind::kBidiStreaming:
          p.Print(MethodVars(s, m),
                  "  // rpc $proto_name$(stream $Req$) returns (stream $Resp$)\n"
                  "  virtual std::unique_ptr<::hrpc::ClientReaderWriter<$Req$, $Resp$>> $Method$(\n"
                  "      ::hrpc::ClientContext& ctx) = 0;\n");
          break;
      }
    }
    p.Print("};\n\n");

    // Stub.
    p.Print(v,
            "// Calls $full$ through a Channel, which it does not own.\n"
            "class $Svc$::Stub final : public $svc$::StubInterface {\n"
            " public:\n"
            "  explicit Stub(::hrpc::Channel* channel) noexcept : channel_(channel) {}\n\n");
    for (const MethodNames& m : s.methods) {
      switch (m.kind) {
        case Kind::kUnary:
          p.Print(MethodVars(s, m),
                  "  ::hrpc::Status $Method$(::hrpc::ClientContext& ctx, const $Req$& request,\n"
                  "                          $Resp$* response) override;\n"
                  "  void $MethodAsync$(::hrpc::ClientContext& ctx, const $Req$& request, $Resp$* response,\n"
                  "                     ::hrpc::DoneCallback done) override;\n"
                  "  ::hrpc::coro::Future<$Resp$> $MethodFuture$(::hrpc::ClientContext& ctx,\n"
                  "                                              const $Req$& request) override;\n");
          break;
        case Kind::kClientStreaming:
          p.Print(MethodVars(s, m),
                  "  std::unique_ptr<::hrpc::ClientWriter<$Req$, $Resp$>> $Method$(::hrpc::ClientContext& ctx,\n"
                  "                                                            $Resp$* response) override;\n");
          break;
        case Kind::kServerStreaming:
          p.Print(MethodVars(s, m),
                  "  std::unique_ptr<::hrpc::ClientReader<$Resp$>> $Method$(::hrpc::ClientContext& ctx,\n"
                  "                                                   const $Req$& request) override;\n");
          break;
        case Kind::kBidiStreaming:
          p.Print(MethodVars(s, m),
                  "  std::unique_ptr<::hrpc::ClientReaderWriter<$Req$, $Resp$>> $Method$(\n"
                  "      ::hrpc::ClientContext& ctx) override;\n");
          break;
      }
    }
    p.Print(s.methods.empty() ? "\n private:\n  [[maybe_unused]] ::hrpc::Channel* channel_;\n};\n\n"
                              : "\n private:\n  ::hrpc::Channel* channel_;\n};\n\n");
  }
  CloseNamespace(p, file);
}

void GenerateSource(pb::io::Printer& p, const pb::FileDescriptor* file, const std::string& base,
                    const std::vector<ServiceNames>& services) {
  p.Print(
      "// Generated by protoc-gen-hrpc from $file$. DO NOT EDIT.\n"
      "#include \"$base$.hrpc.h\"\n\n",
      "file", file->name(), "base", base);
  if (services.empty()) return;
  OpenNamespace(p, file);
  for (const ServiceNames& s : services) {
    Vars v = {{"Svc", s.cpp}, {"svc", s.qualified}};
    p.Print(v,
            "::hrpc::Status $Svc$::Service::CallMethod(uint32_t method_id, ::hrpc::ServerContext& ctx,\n"
            "                                          std::string_view request, ::hrpc::ResponseWriter& response) {\n");
    if (s.methods.empty()) {
      p.Print("  (void)ctx;\n  (void)request;\n  (void)response;\n");
    }
    p.Print("  switch (method_id) {\n");
    for (const MethodNames& m : s.methods) {
      if (m.kind != Kind::kUnary) {
        p.Print(MethodVars(s, m),
                "    case $method_id$:  // $proto_name$\n"
                "      return ::hrpc::internal::WrongMethodKind($svc$::kMethods[$index$], true);\n");
        continue;
      }
      p.Print(MethodVars(s, m),
              "    case $method_id$:  // $proto_name$\n"
              "      return ::hrpc::internal::DispatchUnary(*this, &$svc$::Service::$Method$, $svc$::kMethods[$index$],\n"
              "                                             ctx, request, response);\n");
    }
    p.Print(v,
            "    default:\n"
            "      return ::hrpc::internal::UnknownMethod($svc$::kServiceName, method_id);\n"
            "  }\n"
            "}\n\n");
    p.Print(v,
            "::hrpc::Status $Svc$::Service::CallStream(uint32_t method_id, ::hrpc::ServerContext& ctx,\n"
            "                                          ::hrpc::ServerStreamBase& stream) {\n");
    if (s.methods.empty()) p.Print("  (void)ctx;\n  (void)stream;\n");
    p.Print("  switch (method_id) {\n");
    for (const MethodNames& m : s.methods) {
      Vars mv = MethodVars(s, m);
      mv["dispatch"] = m.kind == Kind::kClientStreaming   ? "DispatchClientStreaming"
                       : m.kind == Kind::kServerStreaming ? "DispatchServerStreaming"
                                                          : "DispatchBidiStreaming";
      if (m.kind == Kind::kUnary) {
        p.Print(mv,
                "    case $method_id$:  // $proto_name$\n"
                "      return ::hrpc::internal::WrongMethodKind($svc$::kMethods[$index$], false);\n");
        continue;
      }
      p.Print(mv,
              "    case $method_id$:  // $proto_name$\n"
              "      return ::hrpc::internal::$dispatch$(*this, &$svc$::Service::$Method$, $svc$::kMethods[$index$],\n"
              "                                             ctx, stream);\n");
    }
    p.Print(v,
            "    default:\n"
            "      return ::hrpc::internal::UnknownMethod($svc$::kServiceName, method_id);\n"
            "  }\n"
            "}\n\n");
    for (const MethodNames& m : s.methods) {
      if (m.kind == Kind::kClientStreaming) {
        p.Print(MethodVars(s, m),
                "std::unique_ptr<::hrpc::ClientWriter<$Req$, $Resp$>> $Svc$::Stub::$Method$(::hrpc::ClientContext& ctx,\n"
                "                                                                        $Resp$* response) {\n"
                "  return ::hrpc::internal::StartClientStreaming<$Req$, $Resp$>(*channel_, $svc$::kMethods[$index$], ctx,\n"
                "                                                              response);\n"
                "}\n\n");
        continue;
      }
      if (m.kind == Kind::kServerStreaming) {
        p.Print(MethodVars(s, m),
                "std::unique_ptr<::hrpc::ClientReader<$Resp$>> $Svc$::Stub::$Method$(::hrpc::ClientContext& ctx,\n"
                "                                                               const $Req$& request) {\n"
                "  return ::hrpc::internal::StartServerStreaming<$Req$, $Resp$>(*channel_, $svc$::kMethods[$index$], ctx,\n"
                "                                                              request);\n"
                "}\n\n");
        continue;
      }
      if (m.kind == Kind::kBidiStreaming) {
        p.Print(MethodVars(s, m),
                "std::unique_ptr<::hrpc::ClientReaderWriter<$Req$, $Resp$>> $Svc$::Stub::$Method$(\n"
                "    ::hrpc::ClientContext& ctx) {\n"
                "  return ::hrpc::internal::StartBidiStreaming<$Req$, $Resp$>(*channel_, $svc$::kMethods[$index$], ctx);\n"
                "}\n\n");
        continue;
      }
      p.Print(MethodVars(s, m),
              "::hrpc::Status $Svc$::Stub::$Method$(::hrpc::ClientContext& ctx, const $Req$& request,\n"
              "                                     $Resp$* response) {\n"
              "  return channel_->CallMethod($svc$::kMethods[$index$], ctx, request, response);\n"
              "}\n\n"
              "void $Svc$::Stub::$MethodAsync$(::hrpc::ClientContext& ctx, const $Req$& request, $Resp$* response,\n"
              "                                ::hrpc::DoneCallback done) {\n"
              "  channel_->CallMethodAsync($svc$::kMethods[$index$], ctx, request, response, std::move(done));\n"
              "}\n\n"
              "::hrpc::coro::Future<$Resp$> $Svc$::Stub::$MethodFuture$(::hrpc::ClientContext& ctx,\n"
              "                                                         const $Req$& request) {\n"
              "  return ::hrpc::internal::CallFuture<$Resp$>(*channel_, $svc$::kMethods[$index$], ctx, request);\n"
              "}\n\n");
    }
  }
  CloseNamespace(p, file);
}

void GenerateMock(pb::io::Printer& p, const pb::FileDescriptor* file, const std::string& base,
                  const std::vector<ServiceNames>& services) {
  p.Print(
      "// Generated by protoc-gen-hrpc from $file$. DO NOT EDIT.\n"
      "// gmock mocks of the stub interfaces; include from tests only.\n"
      "#pragma once\n\n"
      "#include <gmock/gmock.h>\n\n"
      "#include \"$base$.hrpc.h\"\n\n",
      "file", file->name(), "base", base);
  if (services.empty()) return;
  OpenNamespace(p, file);
  for (const ServiceNames& s : services) {
    p.Print({{"Mock", s.mock}, {"svc", s.qualified}},
            "class $Mock$ : public $svc$::StubInterface {\n"
            " public:\n");
    for (const MethodNames& m : s.methods) {
      if (m.kind == Kind::kClientStreaming) {
        p.Print(MethodVars(s, m),
                "  MOCK_METHOD((std::unique_ptr<::hrpc::ClientWriter<$Req$, $Resp$>>), $Method$,\n"
                "              (::hrpc::ClientContext & ctx, $Resp$* response), (override));\n");
        continue;
      }
      if (m.kind == Kind::kServerStreaming) {
        p.Print(MethodVars(s, m),
                "  MOCK_METHOD((std::unique_ptr<::hrpc::ClientReader<$Resp$>>), $Method$,\n"
                "              (::hrpc::ClientContext & ctx, const $Req$& request), (override));\n");
        continue;
      }
      if (m.kind == Kind::kBidiStreaming) {
        p.Print(MethodVars(s, m),
                "  MOCK_METHOD((std::unique_ptr<::hrpc::ClientReaderWriter<$Req$, $Resp$>>), $Method$,\n"
                "              (::hrpc::ClientContext & ctx), (override));\n");
        continue;
      }
      p.Print(MethodVars(s, m),
              "  MOCK_METHOD(::hrpc::Status, $Method$,\n"
              "              (::hrpc::ClientContext & ctx, const $Req$& request, $Resp$* response), (override));\n"
              "  MOCK_METHOD(void, $MethodAsync$,\n"
              "              (::hrpc::ClientContext & ctx, const $Req$& request, $Resp$* response,\n"
              "               ::hrpc::DoneCallback done),\n"
              "              (override));\n"
              "  MOCK_METHOD(::hrpc::coro::Future<$Resp$>, $MethodFuture$,\n"
              "              (::hrpc::ClientContext & ctx, const $Req$& request), (override));\n");
    }
    p.Print("};\n\n");
  }
  CloseNamespace(p, file);
}

}  // namespace

std::string ResolveKeyword(const std::string& name) {
  return Keywords().count(name) != 0 ? name + "_" : name;
}

bool HrpcGenerator::Generate(const pb::FileDescriptor* file, const std::string& parameter,
                             pb::compiler::GeneratorContext* context, std::string* error) const {
  if (!parameter.empty()) {
    *error = "protoc-gen-hrpc takes no options (got \"" + parameter + "\")";
    return false;
  }
  std::vector<ServiceNames> services(static_cast<size_t>(file->service_count()));
  std::vector<std::string> errors;
  for (int i = 0; i < file->service_count(); ++i) BuildService(file->service(i), &services[static_cast<size_t>(i)], &errors);
  CheckFile(file, services, &errors);
  if (!errors.empty()) {
    // protoc prints this after "--hrpc_out: "; one problem per line, all of them.
    *error = errors.size() == 1 ? errors[0] : std::to_string(errors.size()) + " problems:";
    if (errors.size() > 1) {
      for (const std::string& e : errors) *error += "\n  " + e;
    }
    return false;
  }

  const std::string base = pb::compiler::cpp::StripProto(file->name());
  {
    std::unique_ptr<pb::io::ZeroCopyOutputStream> out(context->Open(base + ".hrpc.h"));
    pb::io::Printer p(out.get(), '$');
    GenerateHeader(p, file, base, services);
  }
  {
    std::unique_ptr<pb::io::ZeroCopyOutputStream> out(context->Open(base + ".hrpc.cc"));
    pb::io::Printer p(out.get(), '$');
    GenerateSource(p, file, base, services);
  }
  {
    std::unique_ptr<pb::io::ZeroCopyOutputStream> out(context->Open(base + ".hrpc.mock.h"));
    pb::io::Printer p(out.get(), '$');
    GenerateMock(p, file, base, services);
  }
  return true;
}

}  // namespace hrpc::plugin
