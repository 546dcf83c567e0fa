// protoc-gen-hrpc: the code generator behind the plugin (see docs/protocol.md,
// "Generated code", for the shapes it emits).
#pragma once

#include <cstdint>
#include <string>

#include <google/protobuf/compiler/code_generator.h>

namespace hrpc::plugin {

class HrpcGenerator final : public google::protobuf::compiler::CodeGenerator {
 public:
  bool Generate(const google::protobuf::FileDescriptor* file, const std::string& parameter,
                google::protobuf::compiler::GeneratorContext* context, std::string* error) const override;
  uint64_t GetSupportedFeatures() const override { return FEATURE_PROTO3_OPTIONAL; }
};

// protobuf's rule for C++ identifiers that are keywords: append '_'
// (message `delete` -> class delete_, field `new` -> new_()).
std::string ResolveKeyword(const std::string& name);

}  // namespace hrpc::plugin
