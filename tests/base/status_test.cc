#include "hrpc/base/status.h"

#include <cerrno>
#include <string>

#include <gtest/gtest.h>

namespace hrpc {
namespace {

TEST(StatusTest, OkIsDefaultAndCheap) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_EQ(sizeof(Status), sizeof(void*));
}

TEST(StatusTest, ErrorCarriesCodeAndMessage) {
  Status s = ResourceExhaustedError("pool class 4096 empty");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.ToString(), "RESOURCE_EXHAUSTED: pool class 4096 empty");
  Status copy = s;
  EXPECT_EQ(copy, s);
  EXPECT_EQ(s.WithContext("alloc").message(), "alloc: pool class 4096 empty");
}

TEST(StatusTest, ErrnoMapping) {
  EXPECT_EQ(ErrnoStatus(ENOSPC, "write").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(ECONNRESET, "recv").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoStatus(EIO, "read").code(), StatusCode::kDataLoss);
  EXPECT_NE(ErrnoStatus(ENOENT, "open").message().find("open: "), std::string::npos);
}

Result<int> Half(int v) {
  if (v % 2) return InvalidArgumentError("odd");
  return v / 2;
}

Status Quarter(int v, int* out) {
  HRPC_ASSIGN_OR_RETURN(int h, Half(v));
  HRPC_ASSIGN_OR_RETURN(*out, Half(h));
  return Status::Ok();
}

Status CheckEven(int v) {
  HRPC_TRY(Half(v));
  return Status::Ok();
}

TEST(ResultTest, ValueAndErrorPropagate) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  EXPECT_EQ(Quarter(6, &out).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_FALSE(CheckEven(3).ok());
  Result<std::string> r = std::string("abc");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 3u);
  Result<std::string> moved = std::move(r);
  EXPECT_EQ(*moved, "abc");
}

TEST(ResultTest, OkStatusIsNotAValue) {
  Result<int> r{Status::Ok()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ResultDeathTest, ValueOfErrorAborts) {
  Result<int> r = NotFoundError("nothing");
  EXPECT_DEATH((void)r.value(), "NOT_FOUND: nothing");
}

}  // namespace
}  // namespace hrpc
