// protoc-gen-hrpc: run by protoc as `--hrpc_out=DIR` (with
// --plugin=protoc-gen-hrpc=PATH). Emits <name>.hrpc.h, <name>.hrpc.cc and
// <name>.hrpc.mock.h next to protoc's <name>.pb.h.
#include <google/protobuf/compiler/plugin.h>

#include "hrpc_generator.h"

int main(int argc, char* argv[]) {
  hrpc::plugin::HrpcGenerator generator;
  return google::protobuf::compiler::PluginMain(argc, argv, &generator);
}
