// Shared by the fuzz targets: a check that aborts (libFuzzer records the input
// as a crash) with what was violated, and a small pool for the targets that
// run a transport.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "hrpc/mempool/pool.h"

#define HRPC_FUZZ_CHECK(cond, ...)                                          \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "fuzz check failed: %s: ", #cond);               \
      std::fprintf(stderr, __VA_ARGS__);                                    \
      std::fprintf(stderr, "\n");                                           \
      std::abort();                                                         \
    }                                                                       \
  } while (0)

// 64 MiB arenas, no prefault (fast under ASan); aborts when it cannot map one.
inline std::unique_ptr<hrpc::mempool::Pool> MakeFuzzPool() {
  hrpc::mempool::PoolOptions po;
  po.arena_bytes = 64u << 20;
  po.max_class_bytes = 16u << 20;
  po.best_page_mode = hrpc::mempool::PageMode::kTransparentHuge;
  po.prefault = false;
  po.max_arenas = 2;
  auto pool = hrpc::mempool::Pool::Create(po);
  HRPC_FUZZ_CHECK(pool.ok(), "pool: %s", pool.status().ToString().c_str());
  return std::move(*pool);
}
