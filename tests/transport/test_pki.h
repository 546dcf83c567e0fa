// Certificates for TLS tests and benchmarks, made with OpenSSL at run time
// (nothing secret is committed): a CA, and leaf certificates it signs, as PEM
// files in a directory. EC P-256 keys, SHA-256 signatures.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hrpc/base/status.h"

namespace hrpc::testing {

struct CertFiles {
  std::string cert;  // PEM certificate
  std::string key;   // PEM private key
};

class TestPki {
 public:
  // A fresh CA named `ca_name`, its files in `dir` (created if missing):
  // <prefix>ca.pem, <prefix>ca.key.
  static Result<TestPki> Create(const std::string& dir, const std::string& ca_name, const std::string& prefix = "");
  TestPki(TestPki&&) noexcept;
  TestPki& operator=(TestPki&&) noexcept;
  ~TestPki();

  const std::string& ca_file() const { return ca_file_; }
  // A leaf named `name` signed by this CA, valid from now + not_before_s to
  // now + not_after_s, with subjectAltNames like "DNS:localhost",
  // "IP:127.0.0.1"; files <prefix><name>.pem / .key.
  Result<CertFiles> Issue(const std::string& name, const std::vector<std::string>& sans, long not_before_s = -3600,
                          long not_after_s = 86400) const;

 private:
  struct Keys;
  TestPki() = default;
  std::string dir_, prefix_, ca_file_;
  std::unique_ptr<Keys> keys_;
};

}  // namespace hrpc::testing
