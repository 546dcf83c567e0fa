#include "hrpc/base/crc32c.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace hrpc {
namespace {

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 (iSCSI) B.4 test vectors.
  std::vector<unsigned char> zeros(32, 0), ones(32, 0xFF), inc(32);
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(inc.data(), inc.size()), 0x46DD794Eu);
  const char* s = "123456789";
  EXPECT_EQ(Crc32c(s, std::strlen(s)), 0xE3069283u);
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
}

TEST(Crc32cTest, ChainsAndMatchesPortable) {
  std::mt19937 rng(7);
  std::vector<unsigned char> buf(10007);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  uint32_t whole = Crc32c(buf.data(), buf.size());
  EXPECT_EQ(whole, Crc32cPortable(buf.data(), buf.size()));
  for (size_t cut : {0ul, 1ul, 7ul, 8ul, 4096ul, 10006ul}) {
    uint32_t a = Crc32c(buf.data(), cut);
    EXPECT_EQ(Crc32c(buf.data() + cut, buf.size() - cut, a), whole) << cut;
  }
  buf[5000] ^= 1;
  EXPECT_NE(Crc32c(buf.data(), buf.size()), whole);
}

}  // namespace
}  // namespace hrpc
