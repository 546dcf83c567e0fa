// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/)
// from the real encoders, so that every seed is a well-formed input the
// fuzzer mutates from: fuzz_make_seeds tests/fuzz/corpus. Run it again after a
// wire format change. Crash inputs found by fuzzing live beside the seeds
// (crash-*), written by hand from libFuzzer's artifacts, and are kept.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz.pb.h"
#include "hrpc/base/crc32c.h"
#include "hrpc/rpc/method.h"
#include "hrpc/rpc/wire.h"
#ifdef HRPC_FUZZ_WAL
#include "hrpc/nvme/wal.h"
#endif

using namespace hrpc;
using Bytes = std::vector<uint8_t>;

namespace {

std::filesystem::path g_root;

void Write(const std::string& target, const std::string& name, const Bytes& b) {
  const auto dir = g_root / target;
  std::filesystem::create_directories(dir);
  std::ofstream(dir / ("seed-" + name), std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
}

Bytes Frame(wire::FrameHeader h, const std::vector<wire::BulkDescriptor>& d, const std::string& msg,
            const std::string& attachment = "", const std::string& status_message = "") {
  h.message_len = static_cast<uint32_t>(msg.size());
  h.attachment_len = static_cast<uint32_t>(attachment.size());
  h.status_message_len = static_cast<uint32_t>(status_message.size());
  Bytes out(wire::PrefixSize(d.size(), h.request_id != 0) + msg.size() + attachment.size() + status_message.size());
  auto n = wire::EncodeFrame(h, d, std::as_bytes(std::span(msg)), std::as_bytes(std::span(attachment)),
                             status_message, std::as_writable_bytes(std::span(out)));
  if (!n.ok()) {
    std::fprintf(stderr, "encode: %s\n", n.status().ToString().c_str());
    std::exit(1);
  }
  out.resize(*n);
  return out;
}

wire::FrameHeader Request(std::string_view service, std::string_view method, uint64_t txn) {
  wire::FrameHeader h;
  h.kind = wire::FrameKind::kRequest;
  h.txn_id = txn;
  h.service_id = ServiceIdOf(service);
  h.method_id = MethodIdOf(method);
  h.credits = 1;
  h.deadline_us = 5'000'000;
  return h;
}

std::string FuzzReq() {
  hrpcfuzz::Req r;
  r.set_text("hello");
  r.set_blob(std::string("\x00\x01\xff", 3));
  auto* i = r.add_items();
  i->set_a(-7);
  i->set_s("item");
  i->add_f(1);
  i->add_f(2);
  i->add_packed(-3);
  (*r.mutable_tags())["k"] = 5;
  r.mutable_nested()->set_a(9);
  r.set_z(-123456789);
  return r.SerializeAsString();
}

// The RPC frames both the wire and the dispatch target start from.
std::vector<std::pair<std::string, Bytes>> RpcFrames() {
  std::vector<std::pair<std::string, Bytes>> f;
  const std::string req = FuzzReq();
  f.push_back({"echo", Frame(Request("hrpcfuzz.Fuzz", "Echo", 1), {}, req)});
  f.push_back({"count-attachment", Frame(Request("hrpcfuzz.Fuzz", "Count", 2), {}, req, "inline attachment")});
  f.push_back({"echo-pull", Frame(Request("hrpcfuzz.Fuzz", "Echo", 3),
                                  {{.addr = 0x10000, .len = 4096, .rkey = 0x101, .crc32c = 0x1234,
                                    .direction = wire::BulkDirection::kPull}},
                                  req)});
  f.push_back({"echo-push", Frame(Request("hrpcfuzz.Fuzz", "Echo", 4),
                                  {{.addr = 0x20000, .len = 8192, .rkey = 0x202, .direction = wire::BulkDirection::kPush}},
                                  req)});
  wire::FrameHeader with_id = Request("hrpcfuzz.Fuzz", "Echo", 8);
  with_id.request_id = 0x1234567890abcdefull;  // a retried call's id: the 64-byte header
  f.push_back({"echo-request-id", Frame(with_id, {}, req)});
  f.push_back({"reflection-list", Frame(Request("hrpc.Reflection", "ListServices", 5), {}, std::string("\x08\x01", 2))});
  f.push_back({"reflection-stats", Frame(Request("hrpc.Reflection", "GetStats", 6), {}, "")});
  f.push_back({"unknown-method", Frame(Request("hrpcfuzz.Fuzz", "Nope", 7), {}, "")});
  wire::FrameHeader cancel;
  cancel.kind = wire::FrameKind::kCancel;
  cancel.txn_id = 1;
  f.push_back({"cancel", Frame(cancel, {}, "")});
  wire::FrameHeader release = cancel;
  release.kind = wire::FrameKind::kRelease;
  f.push_back({"release", Frame(release, {}, "")});
  wire::FrameHeader credit;
  credit.kind = wire::FrameKind::kCredit;
  credit.credits = 4;
  f.push_back({"credit", Frame(credit, {}, "")});
  wire::FrameHeader resp;
  resp.kind = wire::FrameKind::kResponse;
  resp.txn_id = 9;
  resp.status = StatusCode::kNotFound;
  f.push_back({"response-error", Frame(resp, {}, "", "", "no such thing")});
  return f;
}

// A TCP transport frame (docs/transport.md): 32-byte header, then the body.
Bytes TcpFrame(uint8_t type, const Bytes& body, uint16_t credits = 0, uint64_t op_id = 0, uint64_t addr = 0,
               uint32_t key = 0, uint32_t aux = 0, uint32_t length = UINT32_MAX) {
  Bytes h(32, 0);
  h[0] = 0xA7;
  h[1] = type;
  if (length == UINT32_MAX) length = static_cast<uint32_t>(body.size());
  std::memcpy(&h[2], &credits, 2);
  std::memcpy(&h[4], &length, 4);
  std::memcpy(&h[8], &op_id, 8);
  std::memcpy(&h[16], &addr, 8);
  std::memcpy(&h[24], &key, 4);
  std::memcpy(&h[28], &aux, 4);
  h.insert(h.end(), body.begin(), body.end());
  return h;
}

Bytes Cat(std::initializer_list<Bytes> parts, uint8_t mode) {
  Bytes out{mode};
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

void TcpSeeds() {
  constexpr uint32_t kPad = 992;
  const Bytes msg = RpcFrames()[0].second;
  Write("tcp_stream", "message", Cat({TcpFrame(3, msg)}, 1));
  Write("tcp_stream", "two-messages-credit", Cat({TcpFrame(3, msg), TcpFrame(3, Bytes(10, 'x')), TcpFrame(9, {}, 4)}, 1));
  Write("tcp_stream", "ping", Cat({TcpFrame(10, {})}, 1));
  Bytes payload_body(10, 'm');
  payload_body.resize(10 + kPad, 0);
  payload_body.resize(10 + kPad + 4096, 'p');
  Write("tcp_stream", "message-payload", Cat({TcpFrame(11, payload_body, 0, 0, 4096, 0, 0, 10)}, 3));
  // Runs announced in the header's key: the receiver reads them together.
  Write("tcp_stream", "message-payload-announced",
        Cat({TcpFrame(11, payload_body, 0, 0, 4096, 2, 0, 10), TcpFrame(11, payload_body, 0, 0, 4096, 1, 0, 10),
             TcpFrame(11, payload_body, 0, 0, 4096, 0, 0, 10)},
            3));
  Write("tcp_stream", "message-payload-not-as-announced",
        Cat({TcpFrame(11, payload_body, 0, 0, 4096, 1, 0, 10), TcpFrame(11, payload_body, 0, 0, 4095, 0, 0, 10)}, 3));
  const Bytes long_msg(2000, 'l');
  Write("tcp_stream", "messages-announced",
        Cat({TcpFrame(3, long_msg, 0, 0, 0, 2), TcpFrame(3, long_msg, 0, 0, 0, 1), TcpFrame(3, long_msg)}, 1));
  Bytes write_body(kPad, 0);
  write_body.resize(kPad + 100, 'w');
  Write("tcp_stream", "write", Cat({TcpFrame(4, write_body, 0, 1, 0x1000, 0x10001, 0, 100)}, 1));
  Write("tcp_stream", "read-req", Cat({TcpFrame(6, {}, 0, 2, 0x1000, 0x10001, 64)}, 1));
  // Mode 5: at the buffer the server exposed (placeholders "AAAAAAAA", "KKKK").
  constexpr uint64_t kAddr = 0x4141414141414141ull;
  constexpr uint32_t kKey = 0x4B4B4B4Bu;
  Write("tcp_stream", "write-exposed", Cat({TcpFrame(4, write_body, 0, 1, kAddr, kKey, 0, 100)}, 5));
  Write("tcp_stream", "read-exposed", Cat({TcpFrame(6, {}, 0, 2, kAddr, kKey, 4096)}, 5));
  Write("tcp_stream", "read-exposed-too-long", Cat({TcpFrame(6, {}, 0, 3, kAddr, kKey, 65537)}, 5));
  Bytes big_write(kPad, 0);
  big_write.resize(kPad + 65536, 'w');
  Write("tcp_stream", "write-exposed-whole", Cat({TcpFrame(4, big_write, 0, 4, kAddr, kKey, 0, 65536)}, 5));
  Write("tcp_stream", "read-resp-unasked", Cat({TcpFrame(7, Bytes(kPad + 8, 0), 0, 3, 0, 0, 0, 8)}, 1));
  const std::string why = "bad thing";
  Write("tcp_stream", "error", Cat({TcpFrame(8, Bytes(why.begin(), why.end()), 0, 0, 0, 0, 13)}, 1));
  // Mode 9 (11 with payloads): a checked connection; MESSAGE frames carry
  // their sequence number (op_id) and the CRC32C of the message (aux).
  const auto checked = [](uint8_t type, const Bytes& body, uint64_t seq, size_t msg_bytes, uint64_t payload = 0,
                          uint32_t length = UINT32_MAX) {
    return TcpFrame(type, body, 0, seq, payload, 0, Crc32c(body.data(), msg_bytes), length);
  };
  Write("tcp_stream", "checked-messages",
        Cat({checked(3, msg, 1, msg.size()), checked(3, Bytes(10, 'x'), 2, 10), TcpFrame(9, {}, 4)}, 9));
  Write("tcp_stream", "checked-duplicate", Cat({checked(3, msg, 1, msg.size()), checked(3, msg, 1, msg.size())}, 9));
  Write("tcp_stream", "checked-gap", Cat({checked(3, msg, 1, msg.size()), checked(3, msg, 5, msg.size())}, 9));
  Bytes bad = checked(3, msg, 1, msg.size());
  bad.back() ^= 0x5A;  // the body no longer matches its CRC
  Write("tcp_stream", "checked-corrupt", Cat({bad}, 9));
  Write("tcp_stream", "checked-payload", Cat({checked(11, payload_body, 1, 10, 4096, 10)}, 11));
  // Announced runs on a checked connection: a duplicate planned message is
  // dropped, a planned payload frame is checked like any other.
  const auto announced = [](uint8_t type, const Bytes& body, uint64_t seq, size_t msg_bytes, uint32_t more,
                            uint64_t payload = 0, uint32_t length = UINT32_MAX) {
    return TcpFrame(type, body, 0, seq, payload, more, Crc32c(body.data(), msg_bytes), length);
  };
  Write("tcp_stream", "checked-duplicate-announced",
        Cat({announced(3, long_msg, 1, long_msg.size(), 2), announced(3, long_msg, 1, long_msg.size(), 1),
             announced(3, long_msg, 2, long_msg.size(), 0)},
            9));
  Write("tcp_stream", "checked-payload-announced",
        Cat({announced(11, payload_body, 1, 10, 1, 4096, 10), announced(11, payload_body, 2, 10, 0, 4096, 10)}, 11));
  Write("tcp_stream", "hello-only", Cat({}, 1));
  Write("tcp_stream", "garbage-before-hello", Cat({Bytes(40, 0xEE)}, 0));
}

void UriSeeds() {
  int i = 0;
  for (const char* u : {"tcp://127.0.0.1:7000", "rdma://10.0.0.3:4791", "loop://name", "tcp://[::1]:80",
                        "host.example:0", "tcp://a:b:1", "[fe80::1%eth0]:9"}) {
    const std::string s(u);
    Write("uri", std::to_string(i++), Bytes(s.begin(), s.end()));
  }
}

#ifdef HRPC_FUZZ_WAL
void WalSeeds() {
  for (uint32_t block : {512u, 4096u}) {
    const std::string header = "request header";
    Bytes payload(block, 0x5A);
    const uint32_t crc = Crc32c(payload.data(), payload.size());
    std::vector<char> hb(nvme::WalHeaderBlockBytes(header.size(), block));
    auto info = nvme::EncodeWalHeaderBlock(hb, 42, header, payload.size(), crc, block);
    if (!info.ok()) std::exit(1);
    Bytes rec(hb.begin(), hb.end());
    rec.insert(rec.end(), payload.begin(), payload.end());
    Write("wal", "record-" + std::to_string(block), Cat({rec}, 0));
    Write("wal", "record-fixcrc-" + std::to_string(block), Cat({rec}, 1));
    Bytes torn(rec.begin(), rec.begin() + rec.size() / 2);
    Write("wal", "torn-" + std::to_string(block), Cat({torn}, 1));
  }
  Write("wal", "zeros", Cat({Bytes(512, 0)}, 0));
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  for (const auto& [name, bytes] : RpcFrames()) {
    Write("wire", name, bytes);
    Write("dispatch", name, bytes);
  }
  Bytes long_header = RpcFrames()[0].second;  // header_len 64: an extension the reader skips
  long_header.insert(long_header.begin() + wire::kHeaderSize, 8, 0);
  long_header[6] = 64;
  Write("wire", "long-header", long_header);
  TcpSeeds();
  UriSeeds();
#ifdef HRPC_FUZZ_WAL
  WalSeeds();
#endif
  std::printf("seeds written to %s\n", argv[1]);
  return 0;
}
