// SHA-256 against the FIPS 180-4 examples, across chunk boundaries, and of files.
#include <gtest/gtest.h>

#include <fstream>

#include "test_util.h"
#include "util/sha256.h"

using hd::Sha256;

TEST(Sha256, KnownDigests) {
  EXPECT_EQ(Sha256().hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256().update("abc").hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256().update("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").hex(),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // A million 'a's, fed in uneven pieces (exercises the partial-block buffer).
  Sha256 h;
  const std::string a(997, 'a');
  size_t left = 1000000;
  for (size_t i = 1; left > 0; i = i % 997 + 1) {
    const size_t n = std::min(i, left);
    h.update(a.data(), n);
    left -= n;
  }
  EXPECT_EQ(h.hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, FileDigestEqualsTheContentsDigest) {
  hd::testing::TempDir dir;
  std::string text(3 << 20, 'x');
  text += "tail";
  std::ofstream(dir.file("f"), std::ios::binary) << text;
  auto want = Sha256().update(text).digest();
  EXPECT_EQ(hd::sha256_file(dir.file("f")), want);
  EXPECT_TRUE(hd::testing::contains(hd::testing::error_of([&] { hd::sha256_file(dir.file("nope")); }),
                                    dir.file("nope")));
}
