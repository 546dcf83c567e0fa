// Shared by the fuzz targets: a check that aborts (libFuzzer records the input
// as a crash) with what was violated.
#pragma once

#include <cstdio>
#include <cstdlib>

#define HRPC_FUZZ_CHECK(cond, ...)                                          \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "fuzz check failed: %s: ", #cond);               \
      std::fprintf(stderr, __VA_ARGS__);                                    \
      std::fprintf(stderr, "\n");                                           \
      std::abort();                                                         \
    }                                                                       \
  } while (0)
