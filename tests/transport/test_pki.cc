#include "test_pki.h"

#include <sys/stat.h>

#include <cstdio>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace hrpc::testing {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;

Status OpenSslError(const std::string& what) {
  char buf[256] = "";
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  ERR_clear_error();
  return InternalError("test pki: " + what + ": " + buf);
}

Status AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) return OpenSslError("extension " + value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return Status::Ok();
}

// A certificate for `key` named `cn`, signed by issuer_key (self-signed when issuer is null).
Result<Cert> MakeCert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key, long serial,
                      long not_before_s, long not_after_s, bool ca, const std::vector<std::string>& sans) {
  Cert cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), not_before_s);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), not_after_s);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509* signer = issuer ? issuer : cert.get();
  HRPC_TRY(AddExt(cert.get(), signer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE"));
  HRPC_TRY(AddExt(cert.get(), signer, NID_key_usage,
                  ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature,keyEncipherment"));
  HRPC_TRY(AddExt(cert.get(), signer, NID_subject_key_identifier, "hash"));
  if (issuer) HRPC_TRY(AddExt(cert.get(), signer, NID_authority_key_identifier, "keyid:always"));
  if (!sans.empty()) {
    std::string joined;
    for (const auto& s : sans) joined += (joined.empty() ? "" : ",") + s;
    HRPC_TRY(AddExt(cert.get(), signer, NID_subject_alt_name, joined));
  }
  if (X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()) == 0) return OpenSslError("sign " + cn);
  return cert;
}

Status WritePem(const std::string& path, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return ErrnoStatus(errno, "open " + path);
  const bool ok = cert ? PEM_write_X509(f, cert) == 1
                       : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  std::fclose(f);
  return ok ? Status::Ok() : OpenSslError("write " + path);
}

}  // namespace

struct TestPki::Keys {
  Pkey key;
  Cert cert;
};

TestPki::TestPki(TestPki&&) noexcept = default;
TestPki& TestPki::operator=(TestPki&&) noexcept = default;
TestPki::~TestPki() = default;

Result<TestPki> TestPki::Create(const std::string& dir, const std::string& ca_name, const std::string& prefix) {
  mkdir(dir.c_str(), 0700);
  TestPki pki;
  pki.dir_ = dir;
  pki.prefix_ = prefix;
  pki.keys_ = std::make_unique<Keys>();
  pki.keys_->key.reset(EVP_EC_gen("P-256"));
  if (!pki.keys_->key) return OpenSslError("CA key");
  HRPC_ASSIGN_OR_RETURN(pki.keys_->cert,
                        MakeCert(pki.keys_->key.get(), ca_name, nullptr, nullptr, 1, -3600, 86400, true, {}));
  pki.ca_file_ = dir + "/" + prefix + "ca.pem";
  HRPC_TRY(WritePem(pki.ca_file_, pki.keys_->cert.get(), nullptr));
  HRPC_TRY(WritePem(dir + "/" + prefix + "ca.key", nullptr, pki.keys_->key.get()));
  return pki;
}

Result<CertFiles> TestPki::Issue(const std::string& name, const std::vector<std::string>& sans, long not_before_s,
                                 long not_after_s) const {
  static long serial = 100;
  Pkey key(EVP_EC_gen("P-256"));
  if (!key) return OpenSslError("key of " + name);
  HRPC_ASSIGN_OR_RETURN(Cert cert, MakeCert(key.get(), name, keys_->cert.get(), keys_->key.get(), ++serial,
                                            not_before_s, not_after_s, false, sans));
  CertFiles files{dir_ + "/" + prefix_ + name + ".pem", dir_ + "/" + prefix_ + name + ".key"};
  HRPC_TRY(WritePem(files.cert, cert.get(), nullptr));
  HRPC_TRY(WritePem(files.key, nullptr, key.get()));
  return files;
}

}  // namespace hrpc::testing
