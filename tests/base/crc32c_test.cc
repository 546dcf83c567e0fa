#include "hrpc/base/crc32c.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace hrpc {
namespace {

// Bit-at-a-time CRC32C straight from the definition (reflected Castagnoli
// polynomial, initial and final inversion): slow, and shares no code with
// either kernel under test.
uint32_t BitwiseCrc32c(const unsigned char* p, size_t n, uint32_t crc = 0) {
  crc = ~crc;
  while (n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

std::vector<unsigned char> RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<unsigned char> v(n);
  for (auto& b : v) b = static_cast<unsigned char>(rng());
  return v;
}

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 (iSCSI) B.4 test vectors.
  std::vector<unsigned char> zeros(32, 0), ones(32, 0xFF), inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<unsigned char>(i);
    dec[i] = static_cast<unsigned char>(31 - i);
  }
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(inc.data(), inc.size()), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(dec.data(), dec.size()), 0x113FDB5Cu);
  const char* s = "123456789";
  EXPECT_EQ(Crc32c(s, std::strlen(s)), 0xE3069283u);
  EXPECT_EQ(Crc32cPortable(s, std::strlen(s)), 0xE3069283u);
  EXPECT_EQ(BitwiseCrc32c(reinterpret_cast<const unsigned char*>(s), 9), 0xE3069283u);
}

TEST(Crc32cTest, EmptyAndOneByte) {
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  EXPECT_EQ(Crc32c(nullptr, 0, 0xDEADBEEFu), 0xDEADBEEFu);  // nothing to add: the crc passes through
  EXPECT_EQ(Crc32cPortable(nullptr, 0, 0x12345678u), 0x12345678u);
  const unsigned char a = 'a';
  EXPECT_EQ(Crc32c(&a, 1), 0xC1D04330u);
  for (int v = 0; v < 256; ++v) {
    const auto b = static_cast<unsigned char>(v);
    ASSERT_EQ(Crc32c(&b, 1), BitwiseCrc32c(&b, 1)) << v;
  }
}

TEST(Crc32cTest, UnalignedStartsAndLengths) {
  const auto buf = RandomBytes(4096 + 64, 11);
  for (size_t off = 0; off < 16; ++off) {
    for (size_t len : {1ul, 3ul, 7ul, 8ul, 15ul, 16ul, 31ul, 63ul, 64ul, 255ul, 256ul, 1000ul, 4095ul, 4096ul}) {
      const unsigned char* p = buf.data() + off;
      ASSERT_EQ(Crc32c(p, len), BitwiseCrc32c(p, len)) << "off " << off << " len " << len;
    }
  }
}

TEST(Crc32cTest, PageAndMegabyteMatchBitwiseReference) {
  for (size_t n : {4096ul, 1ul << 20}) {
    const auto buf = RandomBytes(n, static_cast<unsigned>(n));
    const uint32_t want = BitwiseCrc32c(buf.data(), buf.size());
    EXPECT_EQ(Crc32c(buf.data(), buf.size()), want) << n;
    EXPECT_EQ(Crc32cPortable(buf.data(), buf.size()), want) << n;
  }
}

TEST(Crc32cTest, ChainsAndMatchesPortable) {
  auto buf = RandomBytes(10007, 7);
  uint32_t whole = Crc32c(buf.data(), buf.size());
  EXPECT_EQ(whole, Crc32cPortable(buf.data(), buf.size()));
  for (size_t cut : {0ul, 1ul, 7ul, 8ul, 4096ul, 10006ul, 10007ul}) {
    uint32_t a = Crc32c(buf.data(), cut);
    EXPECT_EQ(Crc32c(buf.data() + cut, buf.size() - cut, a), whole) << cut;
    EXPECT_EQ(Crc32cPortable(buf.data() + cut, buf.size() - cut, Crc32cPortable(buf.data(), cut)), whole) << cut;
  }
  // Three pieces, the middle one odd-sized and unaligned.
  const uint32_t a = Crc32c(buf.data(), 3);
  const uint32_t b = Crc32c(buf.data() + 3, 4099, a);
  EXPECT_EQ(Crc32c(buf.data() + 4102, buf.size() - 4102, b), whole);
  buf[5000] ^= 1;
  EXPECT_NE(Crc32c(buf.data(), buf.size()), whole);
}

}  // namespace
}  // namespace hrpc
