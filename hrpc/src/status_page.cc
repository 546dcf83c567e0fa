// The /status and /rpcz pages of the HTTP endpoint: a few tables, rendered as
// aligned plain text (curl) or as a small HTML page (a browser).
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "hrpc/mempool/copy.h"
#include "observability.h"
#include "peer_table.h"
#include "runtime_internal.h"

namespace hrpc::internal {
namespace {

struct Table {
  std::string title;
  std::vector<std::string> head;
  std::vector<std::vector<std::string>> rows;
  std::string note;  // below the title
};

struct Page {
  std::string title;
  std::vector<std::pair<std::string, std::string>> facts;
  std::vector<Table> tables;
};

std::string HtmlEscape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string RenderText(const Page& p) {
  std::string out = p.title + "\n" + std::string(p.title.size(), '=') + "\n";
  size_t kw = 0;
  for (const auto& [k, v] : p.facts) kw = std::max(kw, k.size());
  for (const auto& [k, v] : p.facts) out += k + ":" + std::string(kw - k.size() + 1, ' ') + v + "\n";
  for (const Table& t : p.tables) {
    out += "\n" + t.title + "\n" + std::string(t.title.size(), '-') + "\n";
    if (!t.note.empty()) out += t.note + "\n";
    if (t.rows.empty()) {
      out += "(none)\n";
      continue;
    }
    std::vector<size_t> w(t.head.size(), 0);
    for (size_t i = 0; i < t.head.size(); ++i) w[i] = t.head[i].size();
    for (const auto& r : t.rows) {
      for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
    }
    auto line = [&](const std::vector<std::string>& cells) {
      std::string l;
      for (size_t i = 0; i < w.size(); ++i) {
        const std::string& c = i < cells.size() ? cells[i] : std::string();
        // First column left-aligned (names), the others right-aligned (numbers).
        if (i == 0) {
          l += c + std::string(w[i] - c.size(), ' ');
        } else {
          l += "  " + std::string(w[i] - c.size(), ' ') + c;
        }
      }
      while (!l.empty() && l.back() == ' ') l.pop_back();
      return l + "\n";
    };
    out += line(t.head);
    for (const auto& r : t.rows) out += line(r);
  }
  return out;
}

std::string RenderHtml(const Page& p) {
  std::string out =
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + HtmlEscape(p.title) +
      "</title>\n<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}"
      "th,td{border:1px solid #ccc;padding:2px 8px;font-size:90%}td{text-align:right;font-family:monospace}"
      "td:first-child{text-align:left}th{background:#eee}</style></head><body>\n<h1>" +
      HtmlEscape(p.title) + "</h1>\n<p><a href=\"/status\">status</a> &middot; <a href=\"/rpcz\">rpcz</a> &middot; "
      "<a href=\"/metrics\">metrics</a> &middot; <a href=\"/health\">health</a></p>\n<table>\n";
  for (const auto& [k, v] : p.facts) out += "<tr><th>" + HtmlEscape(k) + "</th><td>" + HtmlEscape(v) + "</td></tr>\n";
  out += "</table>\n";
  for (const Table& t : p.tables) {
    out += "<h2>" + HtmlEscape(t.title) + "</h2>\n";
    if (!t.note.empty()) out += "<p>" + HtmlEscape(t.note) + "</p>\n";
    if (t.rows.empty()) {
      out += "<p>(none)</p>\n";
      continue;
    }
    out += "<table><tr>";
    for (const auto& h : t.head) out += "<th>" + HtmlEscape(h) + "</th>";
    out += "</tr>\n";
    for (const auto& r : t.rows) {
      out += "<tr>";
      for (const auto& c : r) out += "<td>" + HtmlEscape(c) + "</td>";
      out += "</tr>\n";
    }
    out += "</table>\n";
  }
  return out + "</body></html>\n";
}

std::string Render(const Page& p, bool html) { return html ? RenderHtml(p) : RenderText(p); }

std::string U(uint64_t v) { return std::to_string(v); }
std::string F(double v, int digits = 1) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string WallTime(std::chrono::system_clock::time_point t, bool millis) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  localtime_r(&secs, &tm);
  char b[64];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S", &tm);
  std::string s = b;
  if (millis) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count() % 1000;
    std::snprintf(b, sizeof b, ".%03lld", static_cast<long long>(ms));
    s += b;
  }
  return s;
}

std::string Ago(std::chrono::system_clock::time_point t) {
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now() - t).count();
  if (s < 120) return std::to_string(s) + " s";
  if (s < 7200) return std::to_string(s / 60) + " min";
  if (s < 172800) return std::to_string(s / 3600) + " h";
  return std::to_string(s / 86400) + " d";
}

std::string Codes(const MethodStats& m) {
  std::string s;
  for (const auto& [code, n] : m.errors_by_code) {
    if (!s.empty()) s += " ";
    s += std::string(StatusCodeName(code)) + ":" + U(n);
  }
  return s;
}

Table MethodTable(std::string title, const std::vector<MethodStats>& stats, std::string note) {
  Table t{std::move(title),
          {"method", "calls", "errors", "in_flight", "mean_us", "p50_us", "p99_us", "p999_us", "max_us", "bytes_in",
           "bytes_out", "errors_by_code"},
          {},
          std::move(note)};
  for (const MethodStats& m : stats) {
    t.rows.push_back({m.method, U(m.count), U(m.errors), std::to_string(m.in_flight), F(m.mean_us), F(m.p50_us),
                      F(m.p99_us), F(m.p999_us), F(m.max_us), U(m.bytes_in), U(m.bytes_out), Codes(m)});
  }
  return t;
}

}  // namespace

std::string RenderStatus(WorkerSet& ws, const ServerView* server, const MetricsCollector& metrics, bool html,
                         const std::string& http_address) {
  Page p;
  p.title = server != nullptr ? "hrpc server status" : "hrpc runtime status";
  const RuntimeStats rs = ws.Stats();
  if (server != nullptr) {
    std::string uris;
    for (const auto& u : server->bound_uris()) uris += (uris.empty() ? "" : " ") + u;
    p.facts.push_back({"listening on", uris});
    p.facts.push_back({"http endpoint", http_address});
    p.facts.push_back({"started", WallTime(server->start_time(), false) + " (" + Ago(server->start_time()) + " ago)"});
    p.facts.push_back({"requests running", std::to_string(server->requests_running()) + " (max " +
                                               U(server->max_concurrent_requests()) + ")"});
    p.facts.push_back({"connections", U(server->connections().size())});
  }
  p.facts.push_back({"workers", U(rs.workers) + " in " + U(ws.num_groups()) + " network group(s), " + U(rs.pools) +
                                    " pool(s)"});
  p.facts.push_back({"transport choice", std::string(TransportChoiceName(ws.options().transport_choice))});
  p.facts.push_back({"servers / channels", U(rs.servers) + " / " + U(rs.channels)});
  p.facts.push_back({"payload bytes copied", U(mempool::CopiedBytesTotal())});

  if (server != nullptr) {
    Table svc{"Services", {"service", "methods"}, {}, {}};
    for (const auto& s : server->services()) {
      std::string methods;
      for (const auto& m : s.methods) {
        const size_t dot = m.rfind('.');
        methods += (methods.empty() ? "" : " ") + (dot == std::string::npos ? m : m.substr(dot + 1));
      }
      svc.rows.push_back({s.name, methods});
    }
    p.tables.push_back(std::move(svc));
    p.tables.push_back(MethodTable("Server methods", server->server_stats().Snapshot(),
                                   "latency from the request's arrival to its response sent"));
  }
  p.tables.push_back(MethodTable("Client methods (every channel of the runtime)", ws.client_stats().Snapshot(),
                                 "latency end to end"));

  if (server != nullptr) {
    Table t{"Server connections", {"peer", "transport", "worker", "open for", "requests", "running"}, {}, {}};
    for (const auto& c : server->connections()) {
      t.rows.push_back({c->peer, c->scheme, U(c->worker), Ago(c->opened), U(c->started.Get()), U(c->unfinished())});
    }
    p.tables.push_back(std::move(t));
  }
  {
    Table t{"Client connections", {"peer", "transport", "worker", "open for", "calls", "in_flight"}, {}, {}};
    Table c{"Client connection counters", {"worker", "open", "connects", "connect_failures", "reconnects", "lost"}, {}, {}};
    for (size_t w = 0; w < ws.size(); ++w) {
      const PeerTable* pt = ws.peer_table(w);
      if (pt == nullptr) continue;
      for (const auto& l : pt->Links()) {
        t.rows.push_back({l->peer, l->scheme, U(l->worker), Ago(l->opened), U(l->started.Get()), U(l->unfinished())});
      }
      const PeerTable::Counters& k = pt->counters();
      c.rows.push_back({U(w), U(pt->open_links()), U(k.connects.Get()), U(k.connect_failures.Get()),
                        U(k.reconnects.Get()), U(k.lost.Get())});
    }
    p.tables.push_back(std::move(t));
    p.tables.push_back(std::move(c));
  }
  {
    Table t{"Transports",
            {"worker", "transport", "open", "opened_in", "opened_out", "closed_local/peer/error", "connect_fail_out/in",
             "msgs_sent", "msgs_recv", "msg_bytes_sent", "msg_bytes_recv", "payload_bytes_sent/recv", "reads", "writes",
             "one_sided_bytes", "refused_by_peer/here", "stalls_credit/sendq/ops"},
            {},
            {}};
    for (const auto& e : ws.TransportEntries()) {
      const transport::TransportCounters& c = *e.counters;
      t.rows.push_back({U(e.worker), e.scheme, U(c.open()), U(c.accepted.Get()), U(c.connected.Get()),
                        U(c.closed_local.Get()) + "/" + U(c.closed_by_peer.Get()) + "/" + U(c.failed.Get()),
                        U(c.connect_failures.Get()) + "/" + U(c.handshake_failures.Get()), U(c.messages_sent.Get()),
                        U(c.messages_received.Get()), U(c.message_bytes_sent.Get()), U(c.message_bytes_received.Get()),
                        U(c.payload_bytes_sent.Get()) + "/" + U(c.payload_bytes_received.Get()), U(c.reads.Get()),
                        U(c.writes.Get()), U(c.read_bytes.Get() + c.write_bytes.Get()),
                        U(c.refused_by_peer.Get()) + "/" + U(c.refused_here.Get()),
                        U(c.credit_stalls.Get()) + "/" + U(c.send_queue_stalls.Get()) + "/" + U(c.op_slot_stalls.Get())});
      if (e.scheme == "rdma") {
        t.note += "rdma worker " + U(e.worker) + ": completion errors " + U(c.completion_errors.Get()) +
                  " (RNR retry exceeded " + U(c.rnr_retry_exceeded.Get()) + ", retry exceeded " +
                  U(c.retry_exceeded.Get()) + "), receive refill failures " + U(c.receive_refill_failures.Get()) +
                  ", inline sends " + U(c.inline_sends.Get()) + ", credit messages " + U(c.credit_messages.Get()) +
                  "\n";
      }
    }
    if (!t.note.empty()) t.note.pop_back();
    p.tables.push_back(std::move(t));
  }
  {
    const auto pools = ws.Pools();
    Table t{"Pools", {"pool", "numa_node", "page_mode", "arenas", "max_arenas", "mapped_MiB"}, {}, {}};
    Table c{"Pool size classes (carved ones)",
            {"pool", "class_bytes", "in_use", "free", "high_water", "in_use_MiB", "failures"}, {}, {}};
    for (size_t i = 0; i < pools.size(); ++i) {
      const mempool::Pool& pool = *pools[i];
      t.rows.push_back({U(i), std::to_string(pool.numa_node()), std::string(mempool::PageModeName(pool.page_mode())),
                        U(pool.num_arenas()), U(pool.options().max_arenas),
                        F(static_cast<double>(pool.num_arenas() * pool.options().arena_bytes) / (1 << 20), 0)});
      for (const auto& s : pool.Stats()) {
        if (s.carved == 0 && s.failures == 0) continue;
        c.rows.push_back({U(i), U(s.block_bytes), U(s.in_use), U(s.free), U(s.high_water),
                          F(static_cast<double>(s.in_use * s.block_bytes) / (1 << 20), 2), U(s.failures)});
      }
    }
    p.tables.push_back(std::move(t));
    p.tables.push_back(std::move(c));
  }
  {
    Table t{"Workers",
            {"worker", "name", "cpu", "group", "pool", "busy_%", "run_queue", "coroutines", "cpu_s", "switches",
             "sleeps"},
            {},
            "busy_%: over the last second or more"};
    for (size_t w = 0; w < ws.size(); ++w) {
      const coro::Scheduler::Load load = ws.scheduler(w).load();
      coro::Worker& worker = ws.worker(w);
      t.rows.push_back({U(w), std::string(ws.scheduler(w).name()), std::to_string(worker.cpu()), U(ws.group_of(w)),
                        U(ws.pool_index(w)), F(100.0 * metrics.BusyRatio(w, load.busy, load.idle)), U(load.run_queue),
                        U(load.alive), F(std::chrono::duration<double>(worker.CpuTime()).count(), 2),
                        U(load.context_switches), U(load.sleeps)});
    }
    p.tables.push_back(std::move(t));
  }
  return Render(p, html);
}

std::string RenderRpcz(const ServerView& server, size_t max_rows, bool html) {
  std::vector<RpczRecord> slow, failed;
  server.ReadRpcz(&slow, &failed);
  std::sort(slow.begin(), slow.end(), [](const RpczRecord& a, const RpczRecord& b) { return a.total_ns > b.total_ns; });
  std::sort(failed.begin(), failed.end(), [](const RpczRecord& a, const RpczRecord& b) { return a.start > b.start; });
  if (slow.size() > max_rows) slow.resize(max_rows);
  if (failed.size() > max_rows) failed.resize(max_rows);
  auto table = [](std::string title, std::string note, const std::vector<RpczRecord>& recs) {
    Table t{std::move(title), {"time", "method", "peer", "status", "total_us"}, {}, std::move(note)};
    for (size_t i = 0; i < kNumPhases; ++i) t.head.push_back(std::string(RpczPhaseName(i)) + "_us");
    for (const char* h : {"bytes_in", "bytes_out", "worker", "txn"}) t.head.push_back(h);
    for (const RpczRecord& r : recs) {
      std::vector<std::string> row = {WallTime(r.start, true), r.method, r.peer, std::string(StatusCodeName(r.code)),
                                      F(static_cast<double>(r.total_ns) / 1e3)};
      for (uint64_t ns : r.phase_ns) row.push_back(F(static_cast<double>(ns) / 1e3));
      for (uint64_t v : {r.bytes_in, r.bytes_out, static_cast<uint64_t>(r.worker), r.txn}) row.push_back(U(v));
      t.rows.push_back(std::move(row));
    }
    return t;
  };
  Page p;
  p.title = "hrpc rpcz";
  p.facts.push_back({"phases",
                     "queue = arrival to its coroutine running; pull = reading the request's bulk attachment; "
                     "handler; push = placing the response attachment (WRITE or expose); reply = sending the "
                     "response (and, for a READ response, until the client released it)"});
  p.facts.push_back({"kept", "per worker: the " + U(RpczRing::kSlowPerWindow) + " slowest calls of each " +
                                 U(static_cast<uint64_t>(RpczRing::kWindow.count())) + " s over the last " +
                                 U(RpczRing::kWindows * static_cast<uint64_t>(RpczRing::kWindow.count())) +
                                 " s of traffic, and the last " + U(RpczRing::kFailed) + " failed calls"});
  p.tables.push_back(table("Slowest recent calls", "", slow));
  p.tables.push_back(table("Failed recent calls", "newest first", failed));
  return Render(p, html);
}

}  // namespace hrpc::internal
