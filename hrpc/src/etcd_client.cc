#include "etcd_client.h"

#include <httplib.h>

#include <charconv>
#include <nlohmann/json.hpp>

namespace hrpc::internal {

using json = nlohmann::json;

namespace {

// A watch stream silent for this long is taken as broken; etcd sends a
// progress notification on a quiet watch every 10 minutes (its default
// --experimental-watch-progress-notify-interval).
constexpr std::chrono::minutes kWatchSilence{15};
// How often Cancel() shuts the sockets of the calls still running (a call that
// was connecting when Cancel() began gets its socket after the first try).
constexpr std::chrono::milliseconds kCancelPoll{20};

constexpr std::string_view kBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string Base64Encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = uint32_t(uint8_t(in[i])) << 16 | uint32_t(uint8_t(in[i + 1])) << 8 | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kBase64[(v >> s) & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    out += kBase64[(v >> 18) & 63];
    out += kBase64[(v >> 12) & 63];
    out += i + 1 < in.size() ? kBase64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

Result<std::string> Base64Decode(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const size_t v = kBase64.find(c);
    if (v == std::string_view::npos) return InternalError("etcd answered with a value that is not base64");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

// The end of the key range that holds every key starting with `prefix`.
std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (uint8_t(end.back()) < 0xff) {
      end.back() = char(uint8_t(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

// grpc-gateway writes int64 as a JSON string.
int64_t Int64(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (!it->is_string()) return 0;
  const std::string& s = it->get_ref<const std::string&>();
  int64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

std::string Text(const json& j, const char* field) {
  auto it = j.find(field);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool Bool(const json& j, const char* field) {
  auto it = j.find(field);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

// j's member `field` when j is an object that has it as an object; else an
// empty object (a message of another shape reads as one without that part).
const json& Object(const json& j, const char* field) {
  static const json kEmpty = json::object();
  auto it = j.find(field);
  return it != j.end() && it->is_object() ? *it : kEmpty;
}

// {"error": "...", "message": "...", "code": 5} (unary) or
// {"error": {"grpc_code": 5, "message": "..."}} (a stream).
Status ErrorOf(const json& j) {
  const json& e = j.at("error");
  const json& holder = e.is_object() ? e : j;
  int64_t code = Int64(holder, "grpc_code");
  if (code == 0) code = Int64(holder, "code");
  std::string message = Text(holder, "message");
  if (message.empty() && e.is_string()) message = e.get<std::string>();
  const auto sc = code > 0 && code < kStatusCodeCount ? StatusCode(code) : StatusCode::kUnknown;
  return Status(sc, "etcd: " + message);
}

Result<EtcdKv> KvOf(const json& kv) {
  EtcdKv out;
  HRPC_ASSIGN_OR_RETURN(out.key, Base64Decode(Text(kv, "key")));
  HRPC_ASSIGN_OR_RETURN(out.value, Base64Decode(Text(kv, "value")));
  out.lease = Int64(kv, "lease");
  return out;
}

std::string Describe(httplib::Error e) {
  switch (e) {
    case httplib::Error::Connection: return "cannot connect";
    case httplib::Error::ConnectionTimeout: return "no connection within the timeout";
    case httplib::Error::Read: return "no answer (connection closed or timed out)";
    case httplib::Error::Write: return "cannot send (connection closed or timed out)";
    default: return httplib::to_string(e);
  }
}

}  // namespace

std::string EtcdEndpoint::ToString() const {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<EtcdTarget> ParseEtcdUri(std::string_view uri) {
  constexpr std::string_view kScheme = "etcd://";
  const auto bad = [&](std::string_view why) {
    return InvalidArgumentError("etcd URI '" + std::string(uri) + "': " + std::string(why) +
                                " (expected etcd://host:port[,host:port...]/prefix)");
  };
  if (!uri.starts_with(kScheme)) return bad("not etcd://");
  std::string_view rest = uri.substr(kScheme.size());
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return bad("no /prefix");
  std::string_view members = rest.substr(0, slash);
  std::string_view prefix = rest.substr(slash);
  while (prefix.size() > 1 && prefix.back() == '/') prefix.remove_suffix(1);
  if (prefix == "/") return bad("empty prefix");
  EtcdTarget t;
  t.prefix = std::string(prefix);
  for (;;) {
    const size_t comma = members.find(',');
    const std::string_view hostport = members.substr(0, comma);
    const size_t colon = hostport.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return bad("'" + std::string(hostport) + "' is not host:port");
    const std::string_view port = hostport.substr(colon + 1);
    unsigned value = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc() || p != port.data() + port.size() || value == 0 || value > 65535) {
      return bad("bad port '" + std::string(port) + "'");
    }
    EtcdEndpoint e{std::string(hostport.substr(0, colon)), static_cast<uint16_t>(value)};
    if (e.host.size() > 2 && e.host.front() == '[' && e.host.back() == ']') e.host = e.host.substr(1, e.host.size() - 2);
    t.endpoints.push_back(std::move(e));
    if (comma == std::string_view::npos) break;
    members.remove_prefix(comma + 1);
  }
  return t;
}

EtcdClient::EtcdClient(std::vector<EtcdEndpoint> endpoints, std::chrono::milliseconds timeout)
    : endpoints_(std::move(endpoints)), timeout_(timeout) {}

EtcdClient::~EtcdClient() { Cancel(); }

Status EtcdClient::Begin(httplib::Client* client) {
  std::lock_guard lock(mu_);
  if (cancelled_) return CancelledError("etcd client cancelled");
  calls_.insert(client);
  return Status::Ok();
}

void EtcdClient::End(httplib::Client* client) {
  std::lock_guard lock(mu_);
  calls_.erase(client);
  idle_.notify_all();
}

void EtcdClient::Cancel() {
  std::unique_lock lock(mu_);
  cancelled_ = true;
  while (!calls_.empty()) {
    for (httplib::Client* c : calls_) c->stop();
    idle_.wait_for(lock, kCancelPoll);
  }
}

EtcdEndpoint EtcdClient::Current() {
  std::lock_guard lock(mu_);
  return endpoints_[current_];
}

bool EtcdClient::Cancelled() {
  std::lock_guard lock(mu_);
  return cancelled_;
}

Result<std::string> EtcdClient::Post(std::string_view path, const std::string& body) {
  size_t first;
  {
    std::lock_guard lock(mu_);
    first = current_;
  }
  std::string failures;
  for (size_t i = 0; i < endpoints_.size(); ++i) {
    const size_t index = (first + i) % endpoints_.size();
    const EtcdEndpoint& ep = endpoints_[index];
    httplib::Client cli(ep.host, ep.port);
    cli.set_connection_timeout(timeout_);
    cli.set_read_timeout(timeout_);
    cli.set_write_timeout(timeout_);
    HRPC_TRY(Begin(&cli));
    httplib::Result res = cli.Post(std::string(path), body, "application/json");
    End(&cli);
    if (!res) {
      if (Cancelled()) return CancelledError("etcd client cancelled");
      failures += (failures.empty() ? "" : "; ") + ep.ToString() + ": " + Describe(res.error());
      continue;  // the next member
    }
    Status error;
    if (res->status != 200) {
      const json j = json::parse(res->body, nullptr, false);
      error = j.is_object() && j.contains("error")
                  ? ErrorOf(j)
                  : UnavailableError("etcd " + std::string(path) + ": HTTP " + std::to_string(res->status));
      // A member that cannot serve now (cut off from the quorum: "no leader",
      // 503) is passed over like one that does not answer.
      if (error.code() == StatusCode::kUnavailable || res->status >= 500) {
        failures += (failures.empty() ? "" : "; ") + ep.ToString() + ": " + error.ToString();
        continue;
      }
    }
    {
      std::lock_guard lock(mu_);
      current_ = index;
    }
    if (!error.ok()) return error;
    return std::move(res->body);
  }
  return UnavailableError("etcd " + std::string(path) + ": " + failures);
}

namespace {

Result<json> ParseObject(std::string_view what, const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (!j.is_object()) return InternalError("etcd " + std::string(what) + ": the answer is not a JSON object");
  if (j.contains("error")) return ErrorOf(j);
  return j;
}

}  // namespace

Result<EtcdRange> EtcdClient::RangePrefix(std::string_view prefix) {
  const json req = {{"key", Base64Encode(prefix)}, {"range_end", Base64Encode(PrefixEnd(prefix))}};
  HRPC_ASSIGN_OR_RETURN(std::string body, Post("/v3/kv/range", req.dump()));
  HRPC_ASSIGN_OR_RETURN(json j, ParseObject("range", body));
  EtcdRange out;
  out.revision = Int64(Object(j, "header"), "revision");
  if (out.revision == 0) return InternalError("etcd range: the answer has no revision");
  if (auto it = j.find("kvs"); it != j.end() && it->is_array()) {
    for (const json& kv : *it) {
      HRPC_ASSIGN_OR_RETURN(EtcdKv parsed, KvOf(kv));
      out.kvs.push_back(std::move(parsed));
    }
  }
  return out;
}

Result<std::optional<EtcdKv>> EtcdClient::Get(std::string_view key) {
  const json req = {{"key", Base64Encode(key)}};
  HRPC_ASSIGN_OR_RETURN(std::string body, Post("/v3/kv/range", req.dump()));
  HRPC_ASSIGN_OR_RETURN(json j, ParseObject("range", body));
  if (auto it = j.find("kvs"); it != j.end() && it->is_array() && !it->empty()) {
    HRPC_ASSIGN_OR_RETURN(EtcdKv kv, KvOf(it->front()));
    return std::optional<EtcdKv>(std::move(kv));
  }
  return std::optional<EtcdKv>();
}

Status EtcdClient::Put(std::string_view key, std::string_view value, int64_t lease) {
  json req = {{"key", Base64Encode(key)}, {"value", Base64Encode(value)}};
  if (lease != 0) req["lease"] = std::to_string(lease);
  HRPC_ASSIGN_OR_RETURN(std::string body, Post("/v3/kv/put", req.dump()));
  return ParseObject("put", body).status();
}

Status EtcdClient::Delete(std::string_view key) {
  const json req = {{"key", Base64Encode(key)}};
  HRPC_ASSIGN_OR_RETURN(std::string body, Post("/v3/kv/deleterange", req.dump()));
  return ParseObject("deleterange", body).status();
}

Result<EtcdLease> EtcdClient::GrantLease(std::chrono::seconds ttl) {
  const json req = {{"TTL", std::to_string(ttl.count())}};
  HRPC_ASSIGN_OR_RETURN(std::string body, Post("/v3/lease/grant", req.dump()));
  HRPC_ASSIGN_OR_RETURN(json j, ParseObject("lease grant", body));
  EtcdLease lease{Int64(j, "ID"), std::chrono::seconds(Int64(j, "TTL"))};
  if (lease.id == 0 || lease.ttl.count() <= 0) return InternalError("etcd lease grant: the answer has no ID or TTL");
  return lease;
}

Status EtcdClient::KeepAlive(int64_t lease) {
  const json req = {{"ID", std::to_string(lease)}};
  HRPC_ASSIGN_OR_RETURN(std::string body, Post("/v3/lease/keepalive", req.dump()));
  HRPC_ASSIGN_OR_RETURN(json j, ParseObject("lease keepalive", body));
  // A stream endpoint: one {"result": ...}; TTL absent (0) once the lease is gone.
  if (Int64(Object(j, "result"), "TTL") <= 0) {
    return NotFoundError("etcd lease " + std::to_string(lease) + " has expired");
  }
  return Status::Ok();
}

Status EtcdClient::Revoke(int64_t lease) {
  const json req = {{"ID", std::to_string(lease)}};
  HRPC_ASSIGN_OR_RETURN(std::string body, Post("/v3/lease/revoke", req.dump()));
  return ParseObject("lease revoke", body).status();
}

Status EtcdClient::Watch(std::string_view prefix, int64_t start_revision, const EventsFn& on_events) {
  // etcd's own limit on a request is 1.5 MiB; a watch message carries a batch of them.
  constexpr size_t kMaxWatchMessage = 64u << 20;
  const json create = {{"create_request",
                        {{"key", Base64Encode(prefix)},
                         {"range_end", Base64Encode(PrefixEnd(prefix))},
                         {"start_revision", std::to_string(start_revision)},
                         {"progress_notify", true}}}};
  // One message per line as the stream arrives.
  std::string pending;
  Status stream_status;
  bool done = false;  // on_events asked to stop
  const auto handle_line = [&](const std::string& line) -> Status {
    const json j = json::parse(line, nullptr, false);
    if (!j.is_object()) return InternalError("etcd watch: a message that is not a JSON object");
    if (j.contains("error")) return ErrorOf(j);
    const json& r = Object(j, "result");
    if (const int64_t compacted = Int64(r, "compact_revision"); compacted != 0) {
      return OutOfRangeError("etcd watch: revision " + std::to_string(start_revision) +
                             " was compacted (oldest kept: " + std::to_string(compacted) + ")");
    }
    if (Bool(r, "canceled")) return AbortedError("etcd cancelled the watch: " + Text(r, "cancel_reason"));
    auto events = r.find("events");
    if (events == r.end() || !events->is_array() || events->empty()) return Status::Ok();
    std::vector<EtcdEvent> batch;
    for (const json& e : *events) {
      if (!e.is_object()) return InternalError("etcd watch: an event that is not a JSON object");
      EtcdEvent ev;
      ev.deleted = Text(e, "type") == "DELETE";
      HRPC_ASSIGN_OR_RETURN(ev.kv, KvOf(Object(e, "kv")));
      batch.push_back(std::move(ev));
    }
    if (!on_events(batch, Int64(Object(r, "header"), "revision"))) done = true;
    return Status::Ok();
  };

  httplib::Request req;
  req.method = "POST";
  req.path = "/v3/watch";
  req.body = create.dump();
  req.set_header("Content-Type", "application/json");
  // Require a leader (gRPC metadata "hasleader", through the gateway): a
  // member cut off from the quorum ends the stream (no leader) instead of
  // keeping it open with its own progress notifications, and the watcher
  // lists again from another member.
  req.set_header("Grpc-Metadata-Hasleader", "true");
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    pending.append(data, len);
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      const std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      stream_status = handle_line(line);
      if (!stream_status.ok() || done) return false;
    }
    if (pending.size() > kMaxWatchMessage) {
      stream_status = InternalError("etcd watch: a message longer than " + std::to_string(kMaxWatchMessage) + " bytes");
      return false;
    }
    return true;
  };

  const EtcdEndpoint ep = Current();
  httplib::Client cli(ep.host, ep.port);
  cli.set_connection_timeout(timeout_);
  cli.set_write_timeout(timeout_);
  cli.set_read_timeout(kWatchSilence);
  HRPC_TRY(Begin(&cli));
  httplib::Result res = cli.send(req);
  End(&cli);
  if (Cancelled()) return CancelledError("etcd client cancelled");
  if (done) return Status::Ok();
  if (!stream_status.ok()) return stream_status;
  if (!res) return UnavailableError("etcd watch at " + ep.ToString() + ": " + Describe(res.error()));
  return UnavailableError("etcd watch at " + ep.ToString() + ": the stream ended (HTTP " +
                          std::to_string(res->status) + ")");
}

}  // namespace hrpc::internal
