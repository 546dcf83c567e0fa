// sink_bench: sequential O_DIRECT write and read through the hrpc NVMe sink,
// against fio with the same engine, block size, queue depth and file, in the
// same run. One line per case:
//
//   sink_bench op=write engine=io_uring bs=4096 qd=1 MBps=… iops=… fio_MBps=… ratio_vs_fio=…
//
// The sink side drives the Start*/Reap API from one plain thread (what a
// worker's poller does, minus the scheduler), keeping `qd` requests in flight,
// each one pool slab of `bs` bytes (io_uring: WRITE_FIXED/READ_FIXED on the
// registered arena). fio runs ioengine=io_uring with fixedbufs (or psync),
// direct=1, iodepth=qd, time-based for the same duration. Only the ratio is
// meaningful on a virtual disk with a host cache.
//
//   sink_bench [--file PATH] [--size-mib N] [--seconds S] [--repeat N]
//              [--page-mode huge|thp|small] [--quick] [--no-fio]
//              [--op write|read] [--engine io_uring|psync] [--qd N] [--bs N]
//   (the last four select a subset of the default cases)
//
// The pool uses hugepages when it can (the deployed setting); fio uses its
// default malloc'd buffers. On virtio-blk (max 254 segments) a 1 MiB I/O on
// 4 KiB pages is split in two requests, on hugepages it is not: pass
// --page-mode small for a pages-for-pages comparison.
//
// Each case runs `repeat` times (default 2), ours and fio alternating which
// goes first, and reports the best of each: the disk is shared and noisy.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/cli.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/nvme/sink.h"

namespace {

using namespace hrpc;
using Clock = std::chrono::steady_clock;

struct Args {
  std::string file;
  size_t size_mib = 512;
  double seconds = 0.6;
  int repeat = 2;  // per case: ours and fio alternately, best of each
  mempool::PageMode page_mode = mempool::PageMode::kHugeTlb;  // best mode to try for the pool
  bool quick = false;
  bool fio = true;
  std::string only_op, only_engine;  // empty: all
  unsigned only_qd = 0;              // 0: all
  size_t only_bs = 0;                // 0: all
};

struct Measured {
  double mbps = 0;
  double iops = 0;
  bool ok = false;
};

// Keeps `qd` ops of `bs` bytes in flight, sequentially through [0, file_bytes)
// (wrapping), for `seconds`.
Measured RunSink(nvme::Sink& sink, mempool::Pool& pool, bool write, size_t bs, unsigned qd,
                 uint64_t file_bytes, double seconds) {
  struct Slot {
    nvme::SinkOp op;
    mempool::IoBuf buf;
  };
  std::vector<std::unique_ptr<Slot>> slots;
  for (unsigned i = 0; i < qd; ++i) {
    auto s = std::make_unique<Slot>();
    auto b = pool.Allocate(bs);
    if (!b.ok()) {
      fprintf(stderr, "pool: %s\n", b.status().ToString().c_str());
      return {};
    }
    memset(b->data(), 0x5a + static_cast<int>(i), bs);
    s->buf = mempool::IoBuf(std::move(b).value());
    slots.push_back(std::move(s));
  }
  uint64_t next = 0, ops = 0, errors = 0;
  bool stop = false;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto issue = [&](Slot& s) {
    if (next + bs > file_bytes) next = 0;
    const uint64_t off = next;
    next += bs;
    Status st = write ? sink.StartWrite(off, s.buf, s.op) : sink.StartRead(off, s.buf, s.op);
    if (!st.ok()) {
      fprintf(stderr, "start: %s\n", st.ToString().c_str());
      ++errors;
      stop = true;
    }
  };
  size_t in_flight = 0;
  // psync completes inside Start*: re-issuing from on_done would recurse, so
  // completions that arrive inside issue() are re-issued by the loop below.
  bool issuing = false;
  std::vector<Slot*> ready;
  for (auto& s : slots) {
    Slot* sp = s.get();
    s->op.on_done = [&, sp](nvme::SinkOp& op) {
      --in_flight;
      if (!op.status().ok()) {
        if (errors++ == 0) fprintf(stderr, "io: %s\n", op.status().ToString().c_str());
        stop = true;
        return;
      }
      ++ops;
      if (stop) return;
      // One clock read per completion; stop issuing at the deadline.
      if (Clock::now() >= deadline) {
        stop = true;
        return;
      }
      if (issuing) {
        ready.push_back(sp);
        return;
      }
      ++in_flight;
      issuing = true;
      issue(*sp);
      issuing = false;
    };
  }
  for (auto& s : slots) ready.push_back(s.get());
  for (;;) {
    while (!ready.empty() && !stop) {
      Slot* sp = ready.back();
      ready.pop_back();
      ++in_flight;
      issuing = true;
      issue(*sp);
      issuing = false;
    }
    if (in_flight == 0) break;
    if (sink.Reap(true) < 0) break;
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  Measured m;
  m.ok = errors == 0;
  m.iops = static_cast<double>(ops) / secs;
  m.mbps = static_cast<double>(ops) * static_cast<double>(bs) / secs / 1e6;
  return m;
}

// The number after "key" : in `s` starting at `from`.
double JsonNumber(const std::string& s, size_t from, const char* key) {
  const std::string k = std::string("\"") + key + "\"";
  size_t p = s.find(k, from);
  if (p == std::string::npos) return -1;
  p = s.find(':', p + k.size());
  if (p == std::string::npos) return -1;
  return strtod(s.c_str() + p + 1, nullptr);
}

Measured RunFio(const std::string& file, bool write, nvme::EngineKind engine, size_t bs, unsigned qd,
                uint64_t file_bytes, double seconds) {
  const bool uring = engine == nvme::EngineKind::kIoUring;
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "fio --name=sink --filename=%s --rw=%s --bs=%zu --iodepth=%u --ioengine=%s%s --direct=1 "
           "--size=%llu --runtime=%.2f --time_based --numjobs=1 --thread --output-format=json 2>/dev/null",
           file.c_str(), write ? "write" : "read", bs, qd, uring ? "io_uring" : "psync",
           uring ? " --fixedbufs" : "", static_cast<unsigned long long>(file_bytes), seconds);
  FILE* p = popen(cmd, "r");
  if (p == nullptr) return {};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  Measured m;
  // jobs[0].read / jobs[0].write (an object: `"write" : {`, not the job
  // option `"rw" : "write"`): the first "bw_bytes" and "iops" after it.
  const size_t jobs = out.find("\"jobs\"");
  size_t sect = std::string::npos;
  const std::string key = write ? "\"write\"" : "\"read\"";
  for (size_t at = jobs; at != std::string::npos && sect == std::string::npos;) {
    at = out.find(key, at);
    if (at == std::string::npos) break;
    at += key.size();
    const size_t q = out.find_first_not_of(" \t\n:", at);
    if (q != std::string::npos && out[q] == '{' && out.find(':', at) < q) sect = q;
  }
  if (rc != 0 || sect == std::string::npos) {
    fprintf(stderr, "fio failed (rc %d): %s\n", rc, cmd);
    return m;
  }
  const double bw = JsonNumber(out, sect, "bw_bytes");
  m.iops = JsonNumber(out, sect, "iops");
  m.mbps = bw / 1e6;
  m.ok = bw > 0;
  return m;
}

// Parses the flags into *a; false with *code the exit code (--help: 0, a bad flag: 2).
bool ParseArgs(int argc, char** argv, Args* a, int* code) {
  CLI::App app("Sequential O_DIRECT write and read through the hrpc NVMe sink against fio on the same file,\n"
               "one sink_bench line per case (see the header of bench/sink_bench.cc). --op, --engine, --qd\n"
               "and --bs select a subset of the default cases.",
               "sink_bench");
  std::string page_mode = "huge";
  app.add_option("--file", a->file, "the file to write and read (default: sink_bench.dat beside this program)");
  app.add_option("--size-mib", a->size_mib, "file size in MiB")->capture_default_str();
  app.add_option("--seconds", a->seconds, "seconds per run")->capture_default_str();
  app.add_option("--repeat", a->repeat, "runs per case, ours and fio alternating; the best of each")
      ->capture_default_str();
  app.add_option("--page-mode", page_mode, "the pool's pages: huge | thp | small")
      ->check(CLI::IsMember({"huge", "thp", "small"}))
      ->capture_default_str();
  app.add_flag("--quick", a->quick, "fewer sizes: 4 KiB, 64 KiB and 1 MiB");
  bool no_fio = false;
  app.add_flag("--no-fio", no_fio, "skip fio (no baseline, no ratio)");
  app.add_option("--op", a->only_op, "only this op: write | read")->check(CLI::IsMember({"write", "read"}));
  app.add_option("--engine", a->only_engine, "only this engine: io_uring | psync")
      ->check(CLI::IsMember({"io_uring", "psync"}));
  app.add_option("--qd", a->only_qd, "only this queue depth (0: all)");
  app.add_option("--bs", a->only_bs, "only this block size in bytes (0: all)");
  if (!hrpc::examples::Parse(app, argc, argv, code)) return false;
  a->repeat = std::max(1, a->repeat);
  a->fio = !no_fio;
  a->page_mode = page_mode == "small" ? mempool::PageMode::kSmallPages
                 : page_mode == "thp" ? mempool::PageMode::kTransparentHuge
                                      : mempool::PageMode::kHugeTlb;
  if (a->file.empty()) {
    // Next to the binary: the build tree (ext4 on virtio here), not /tmp.
    a->file = (std::filesystem::absolute(argv[0]).parent_path() / "sink_bench.dat").string();
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (int code = 0; !ParseArgs(argc, argv, &args, &code)) return code;
  spdlog::set_level(spdlog::level::warn);
  const uint64_t file_bytes = static_cast<uint64_t>(args.size_mib) << 20;

  mempool::PoolOptions po;
  po.arena_bytes = 64 * mempool::kMiB;
  po.max_class_bytes = 16 * mempool::kMiB;
  po.max_arenas = 1;
  po.best_page_mode = args.page_mode;
  auto pool = mempool::Pool::Create(po);
  if (!pool.ok()) {
    fprintf(stderr, "pool: %s\n", pool.status().ToString().c_str());
    return 1;
  }

  // Fill the file once so that every case (ours and fio's) overwrites and
  // reads written extents, not fallocated-but-unwritten ones.
  {
    nvme::SinkOptions o;
    o.path = args.file;
    o.pool = pool->get();
    o.size_bytes = file_bytes;
    o.queue_depth = 4;
    auto sink = nvme::Sink::Open(o);
    if (!sink.ok()) {
      fprintf(stderr, "open %s: %s\n", args.file.c_str(), sink.status().ToString().c_str());
      return 1;
    }
    auto slab = (*pool)->Allocate(4 * mempool::kMiB);
    if (!slab.ok()) return 1;
    memset(slab->data(), 0x11, slab->size());
    mempool::IoBuf b(*slab);
    for (uint64_t off = 0; off < file_bytes; off += b.size()) {
      Status st = (*sink)->Write(off, b);
      if (!st.ok()) {
        fprintf(stderr, "fill: %s\n", st.ToString().c_str());
        return 1;
      }
    }
    printf("sink_bench file=%s size_mib=%zu seconds=%.2f repeat=%d engine_default=%s rules={%s} page_mode=%s\n",
           args.file.c_str(), args.size_mib, args.seconds, args.repeat,
           std::string(nvme::EngineKindName((*sink)->engine())).c_str(),
           (*sink)->rules().ToString().c_str(),
           std::string(mempool::PageModeName((*pool)->page_mode())).c_str());
  }

  std::vector<size_t> sizes = {4096, 16384, 65536, 262144, 1 << 20};
  if (args.quick) sizes = {4096, 65536, 1 << 20};
  struct Config {
    nvme::EngineKind engine;
    unsigned qd;
  };
  const Config configs[] = {{nvme::EngineKind::kIoUring, 1},
                            {nvme::EngineKind::kIoUring, 16},
                            {nvme::EngineKind::kPsync, 1}};
  mempool::ResetCopiedBytesThisThread();
  double worst = 1e9;
  int cases = 0, failed = 0;
  for (bool write : {true, false}) {
    if (!args.only_op.empty() && args.only_op != (write ? "write" : "read")) continue;
    for (const Config& c : configs) {
      if (!args.only_engine.empty() && args.only_engine != nvme::EngineKindName(c.engine)) continue;
      if (args.only_qd != 0 && args.only_qd != c.qd) continue;
      nvme::SinkOptions o;
      o.path = args.file;
      o.pool = pool->get();
      o.engine = c.engine == nvme::EngineKind::kIoUring ? nvme::EngineChoice::kIoUring
                                                         : nvme::EngineChoice::kPsync;
      o.queue_depth = c.qd;
      auto sink = nvme::Sink::Open(o);
      if (!sink.ok()) {
        fprintf(stderr, "open: %s\n", sink.status().ToString().c_str());
        return 1;
      }
      for (size_t bs : sizes) {
        if (args.only_bs != 0 && args.only_bs != bs) continue;
        Measured ours, fio;
        auto best = [](Measured& acc, const Measured& m) {
          if (!m.ok) return;
          if (!acc.ok || m.mbps > acc.mbps) acc = m;
        };
        for (int r = 0; r < args.repeat; ++r) {
          const bool fio_first = args.fio && r % 2 == 1;
          if (fio_first) best(fio, RunFio(args.file, write, c.engine, bs, c.qd, file_bytes, args.seconds));
          best(ours, RunSink(**sink, **pool, write, bs, c.qd, file_bytes, args.seconds));
          if (args.fio && !fio_first) best(fio, RunFio(args.file, write, c.engine, bs, c.qd, file_bytes, args.seconds));
        }
        const double ratio = fio.ok && fio.mbps > 0 ? ours.mbps / fio.mbps : 0;
        ++cases;
        if (!ours.ok || (args.fio && !fio.ok)) ++failed;
        if (fio.ok) worst = std::min(worst, ratio);
        printf("sink_bench op=%s engine=%s bs=%zu qd=%u MBps=%.1f iops=%.0f fio_MBps=%.1f ratio_vs_fio=%.3f\n",
               write ? "write" : "read", std::string(nvme::EngineKindName(c.engine)).c_str(), bs, c.qd,
               ours.mbps, ours.iops, fio.mbps, ratio);
        fflush(stdout);
      }
    }
  }
  printf("sink_bench summary cases=%d failed=%d min_ratio_vs_fio=%.3f copied_payload_bytes=%llu\n", cases,
         failed, args.fio ? worst : 0.0,
         static_cast<unsigned long long>(mempool::CopiedBytesThisThread()));
  return failed == 0 ? 0 : 1;
}
