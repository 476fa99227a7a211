// Tests of the safetensors reader/writer: round trips, byte-exact format, interoperability with
// an independent Python reader, and robustness against malformed / truncated / mutated files.
#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <torch/torch.h>

#include "util/error.h"

namespace {

namespace fs = std::filesystem;
using hd::io::SafeTensorsFile;
using hd::io::save_safetensors;
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// ---------------------------------------------------------------------------------------------
// helpers

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A complete file from header text and data bytes (no padding: readers must not need it).
std::string file_bytes(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  // Unlink instead of truncating: ext4 flushes files that are truncated and rewritten
  // (auto_da_alloc), which makes the thousands of rewrites below take seconds.
  std::error_code ec;
  fs::remove(path, ec);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// One JSON tensor entry.
std::string entry(const std::string& dtype, const std::string& shape, uint64_t begin, uint64_t end) {
  return "{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Opens and fully loads a file: the reader may only report problems as hd::Error.
void open_and_load(const std::string& path) { SafeTensorsFile::open(path).load_all(); }

// Expects `fn` to throw hd::Error whose message starts with `path` and contains `phrase`.
template <class F>
void expect_error(F&& fn, const std::string& path, const std::string& phrase) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown; expected one containing \"" << phrase << "\"";
  } catch (const hd::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path, 0), 0u) << "message does not start with the path: " << msg;
    EXPECT_NE(msg.find(phrase), std::string::npos) << "expected \"" << phrase << "\" in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected hd::Error, got another exception: " << e.what();
  }
}
#define EXPECT_HD_ERROR(stmt, path, phrase) \
  do {                                      \
    SCOPED_TRACE(#stmt);                    \
    expect_error([&] { stmt; }, path, phrase); \
  } while (0)

class SafeTensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("hd_test_io_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string tmp(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> dir_entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    return out;
  }

  fs::path dir_;
};

// A small model-like set of tensors covering every dtype, a 0-d and zero-size tensors, and a
// non-contiguous input.
NamedTensors sample_tensors() {
  torch::manual_seed(0);
  return {
      {"f32", torch::randn({3, 4})},
      {"f16", torch::randn({5}).to(torch::kHalf)},
      {"bf16", torch::randn({2, 3}).to(torch::kBFloat16)},
      {"f64_scalar", torch::tensor(3.25, torch::kDouble).reshape({})},
      {"i64_empty", torch::zeros({2, 0, 3}, torch::kLong)},
      {"i32", torch::arange(-6, 6, torch::kInt).reshape({3, 4}).t()},  // non-contiguous
      {"i16", torch::tensor({-300, 0, 300}, torch::kShort)},
      {"i8", torch::tensor({-128, 0, 127}, torch::kChar)},
      {"u8", torch::tensor({0, 7, 255}, torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"f32_empty", torch::empty({0})},
      {"f32_grad", torch::ones({2}, torch::requires_grad())},
  };
}

// ---------------------------------------------------------------------------------------------
// dtypes

TEST(SafeTensorsDtype, NamesRoundTrip) {
  for (const char* name : {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"})
    EXPECT_EQ(hd::io::dtype_name(hd::io::parse_dtype(name)), name);
  EXPECT_EQ(hd::io::parse_dtype("BF16"), torch::kBFloat16);
  EXPECT_EQ(hd::io::dtype_size("F64"), 8u);
  EXPECT_THROW(hd::io::parse_dtype("F128"), hd::Error);
  EXPECT_THROW(hd::io::parse_dtype("f32"), hd::Error);  // names are case-sensitive
  EXPECT_THROW(hd::io::parse_dtype("U16"), hd::Error);  // valid in the format, not in LibTorch 1.13
  EXPECT_THROW(hd::io::dtype_name(torch::kComplexFloat), hd::Error);
}

// ---------------------------------------------------------------------------------------------
// round trips

TEST_F(SafeTensorsTest, RoundTripAllDtypesOrderAndMetadata) {
  const auto tensors = sample_tensors();
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"epoch", "3"}, {"empty", ""}};
  const auto path = tmp("rt.safetensors");
  save_safetensors(path, tensors, meta);

  const auto file = SafeTensorsFile::open(path);
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.metadata(), meta);
  EXPECT_EQ(file.file_size(), fs::file_size(path));
  EXPECT_EQ(file.data_start() % 8, 0u) << "data buffer must be 8-byte aligned";
  ASSERT_EQ(file.tensors().size(), tensors.size());
  const auto loaded = file.load_all();
  ASSERT_EQ(loaded.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, expected] = tensors[i];
    SCOPED_TRACE(name);
    EXPECT_EQ(file.tensors()[i].name, name) << "order not preserved";
    EXPECT_EQ(loaded[i].first, name);
    const torch::Tensor& got = loaded[i].second;
    EXPECT_EQ(got.scalar_type(), expected.scalar_type());
    EXPECT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_TRUE(torch::equal(got, expected.detach()));
    EXPECT_TRUE(file.contains(name));
    EXPECT_EQ(file.info(name).dtype, hd::io::dtype_name(expected.scalar_type()));
    EXPECT_TRUE(torch::equal(file.load(name), got));
  }
  EXPECT_EQ(file.info("f64_scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(file.load("f64_scalar").dim(), 0);
  EXPECT_EQ(file.load("f64_scalar").item<double>(), 3.25);
  EXPECT_EQ(file.info("i64_empty").begin, file.info("i64_empty").end);
  EXPECT_EQ(file.load("i64_empty").sizes(), torch::IntArrayRef({2, 0, 3}));
  // The writer tiles the data buffer exactly: no gaps, no trailing bytes.
  EXPECT_EQ(file.data_start() + file.tensors().back().end, file.file_size());
}

TEST_F(SafeTensorsTest, RoundTripEmptyFileAndNoMetadata) {
  const auto path = tmp("empty.safetensors");
  save_safetensors(path, {});
  const std::string bytes = read_bytes(path);
  EXPECT_EQ(bytes, le64(8) + "{}      ");
  const auto file = SafeTensorsFile::open(path);
  EXPECT_TRUE(file.tensors().empty());
  EXPECT_TRUE(file.metadata().empty());
  EXPECT_TRUE(file.load_all().empty());
}

TEST_F(SafeTensorsTest, OnlyEmptyTensorsKeepOrder) {
  // Several zero-size tensors share offset 0; their order must still survive.
  const NamedTensors tensors = {{"z", torch::empty({0})}, {"a", torch::empty({0, 2})}, {"m", torch::empty({3, 0})}};
  const auto path = tmp("zeros.safetensors");
  save_safetensors(path, tensors);
  const auto file = SafeTensorsFile::open(path);
  ASSERT_EQ(file.tensors().size(), 3u);
  EXPECT_EQ(file.tensors()[0].name, "z");
  EXPECT_EQ(file.tensors()[1].name, "a");
  EXPECT_EQ(file.tensors()[2].name, "m");
}

// ---------------------------------------------------------------------------------------------
// byte-exact format

TEST_F(SafeTensorsTest, WriterOutputIsByteExactAndReaderReadsHandWrittenFile) {
  // The expected bytes, written out by hand: compact JSON in the caller's order, metadata
  // first, padded with spaces to a multiple of 8, then little-endian data.
  std::string header =
      R"({"__metadata__":{"k":"v"},)"
      R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"I16","shape":[],"data_offsets":[8,10]},)"
      R"("e":{"dtype":"U8","shape":[0],"data_offsets":[10,10]}})";
  ASSERT_EQ(header.size(), 186u);
  header += "      ";  // 6 spaces: 186 -> 192, so the data starts at file offset 200
  const std::string data("\x00\x00\x80\x3f"   // 1.0f
                         "\x00\x00\x20\xc0"   // -2.5f
                         "\xfd\xff",          // int16 -3
                         10);
  const std::string expected = std::string("\xc0\0\0\0\0\0\0\0", 8) + header + data;

  const auto path = tmp("exact.safetensors");
  save_safetensors(path,
                   {{"w", torch::tensor({1.0f, -2.5f})},
                    {"b", torch::tensor(-3, torch::kShort).reshape({})},
                    {"e", torch::empty({0}, torch::kByte)}},
                   {{"k", "v"}});
  EXPECT_EQ(read_bytes(path), expected);

  // Reader on the hand-written bytes.
  const auto hand = tmp("hand.safetensors");
  write_bytes(hand, expected);
  const auto file = SafeTensorsFile::open(hand);
  EXPECT_EQ(file.data_start(), 200u);
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"k", "v"}}));
  ASSERT_EQ(file.tensors().size(), 3u);
  EXPECT_EQ(file.tensors()[0].name, "w");
  EXPECT_EQ(file.tensors()[1].name, "b");
  EXPECT_EQ(file.tensors()[2].name, "e");
  EXPECT_EQ(file.info("b").begin, 8u);
  EXPECT_EQ(file.info("b").end, 10u);
  auto w = file.load("w");
  EXPECT_EQ(w.scalar_type(), torch::kFloat);
  EXPECT_EQ(w[0].item<float>(), 1.0f);
  EXPECT_EQ(w[1].item<float>(), -2.5f);
  auto b = file.load("b");
  EXPECT_EQ(b.scalar_type(), torch::kShort);
  EXPECT_EQ(b.dim(), 0);
  EXPECT_EQ(b.item<int16_t>(), -3);
  EXPECT_EQ(file.load("e").numel(), 0);

  // Padding: a 53-byte header gets 3 spaces, up to the next multiple of 8.
  const auto padded = tmp("padded.safetensors");
  save_safetensors(padded, {{"x", torch::tensor({7}, torch::kByte)}});
  const std::string h = R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  ASSERT_EQ(h.size(), 53u);
  EXPECT_EQ(read_bytes(padded), le64(56) + h + "   " + "\x07");
}

TEST_F(SafeTensorsTest, ReaderAcceptsOtherFormattingAndTolerableVariations) {
  // Whitespace, field order, metadata last, an unknown field (scalar and nested), a gap between
  // tensors and trailing bytes are all accepted (see the policy in safetensors.cpp).
  const std::string header =
      "{\n  \"b\" : {\"data_offsets\": [8, 9], \"shape\": [1], \"dtype\": \"U8\", \"x\": 1},\n"
      "  \"a\" : {\"shape\": [ ], \"dtype\": \"F32\", \"data_offsets\": [0, 4], \"y\": {\"z\": [1, [2]]}},\n"
      "  \"__metadata__\": {\"who\": \"hand\"}\n}\t \r\n";
  const std::string data = std::string("\x00\x00\xc0\x3f", 4) + "GAPG" + "\x2a" + "TRAILING";
  const auto path = tmp("fmt.safetensors");
  write_bytes(path, file_bytes(header, data));
  const auto file = SafeTensorsFile::open(path);
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "a");  // data-offset order, not header order
  EXPECT_EQ(file.tensors()[1].name, "b");
  EXPECT_EQ(file.load("a").item<float>(), 1.5f);
  EXPECT_EQ(file.load("b").item<uint8_t>(), 42);
  EXPECT_EQ(file.metadata().at("who"), "hand");
}

// ---------------------------------------------------------------------------------------------
// interoperability: an independent reader written with Python's json + struct

TEST_F(SafeTensorsTest, WriterOutputParsesWithPython) {
  const char* python = "/usr/bin/python3";
  if (::access(python, X_OK) != 0) GTEST_SKIP() << python << " not available";
  const auto path = tmp("py.safetensors");
  save_safetensors(path,
                   {{"f32", torch::tensor({1.5f, -2.0f, 0.25f, 1024.0f}).reshape({2, 2})},
                    {"i64", torch::tensor({int64_t{1}, int64_t{-2}, int64_t{1} << 40})},
                    {"f16", torch::tensor({1.0f, -2.0f}).to(torch::kHalf)},
                    {"bf16", torch::tensor({1.0f}).to(torch::kBFloat16)},
                    {"u8", torch::tensor({0, 7, 255}, torch::kByte)},
                    {"bool", torch::tensor({true, false})},
                    {"f64", torch::tensor(3.5, torch::kDouble).reshape({})},
                    {"empty", torch::empty({0, 4}, torch::kInt)}},
                   {{"format", "pt"}, {"note", "h\xc3\xa9llo"}});
  const auto script = tmp("check.py");
  write_bytes(script, R"PY(
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n, = struct.unpack("<Q", b[:8])
assert (8 + n) % 8 == 0, "data not aligned"
h = json.loads(b[8:8 + n].decode("utf-8"))
assert h.pop("__metadata__") == {"format": "pt", "note": "h\u00e9llo"}
exp = {
    "f32": ("F32", [2, 2], "<4f", (1.5, -2.0, 0.25, 1024.0)),
    "i64": ("I64", [3], "<3q", (1, -2, 1 << 40)),
    "f16": ("F16", [2], "<2H", (0x3C00, 0xC000)),
    "bf16": ("BF16", [1], "<1H", (0x3F80,)),
    "u8": ("U8", [3], "<3B", (0, 7, 255)),
    "bool": ("BOOL", [2], "<2B", (1, 0)),
    "f64": ("F64", [], "<1d", (3.5,)),
    "empty": ("I32", [0, 4], "<0i", ()),
}
assert list(h) == list(exp), list(h)
data, off = b[8 + n:], 0
for name, (dt, shape, fmt, vals) in exp.items():
    e = h[name]
    assert e["dtype"] == dt and e["shape"] == shape, (name, e)
    lo, hi = e["data_offsets"]
    assert lo == off and hi - lo == struct.calcsize(fmt), (name, e)
    assert struct.unpack(fmt, data[lo:hi]) == vals, (name, struct.unpack(fmt, data[lo:hi]))
    off = hi
assert off == len(data), "trailing bytes"
print("ok")
)PY");
  const auto out = tmp("py.out");
  const std::string cmd = std::string(python) + " '" + script + "' '" + path + "' > '" + out + "' 2>&1";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_bytes(out);
  EXPECT_EQ(read_bytes(out), "ok\n");
}

// ---------------------------------------------------------------------------------------------
// malformed files

TEST_F(SafeTensorsTest, MissingDirectoryAndShortFiles) {
  const auto missing = tmp("missing.safetensors");
  EXPECT_HD_ERROR(SafeTensorsFile::open(missing), missing, "cannot open");
  EXPECT_HD_ERROR(SafeTensorsFile::open(dir_.string()), dir_.string(), "not a regular file");
  for (size_t n : {0, 1, 7}) {
    const auto p = tmp("short" + std::to_string(n));
    write_bytes(p, std::string(n, '\0'));
    EXPECT_HD_ERROR(SafeTensorsFile::open(p), p, "too short");
  }
}

TEST_F(SafeTensorsTest, HeaderLengthChecksComeBeforeAllocation) {
  const auto p = tmp("len.safetensors");
  write_bytes(p, le64(uint64_t{1} << 60) + "{}");
  EXPECT_HD_ERROR(SafeTensorsFile::open(p), p, "exceeds the limit");
  write_bytes(p, le64(~uint64_t{0}) + "{}");
  EXPECT_HD_ERROR(SafeTensorsFile::open(p), p, "exceeds the limit");
  write_bytes(p, le64(3) + "{}");  // one byte more than there is
  EXPECT_HD_ERROR(SafeTensorsFile::open(p), p, "larger than the rest of the file");
  write_bytes(p, le64(0));  // empty header
  EXPECT_HD_ERROR(SafeTensorsFile::open(p), p, "invalid JSON");

  // A 200 MiB sparse file claiming a 150 MiB header: refused by the cap, not by a read error.
  const auto big = tmp("big.safetensors");
  write_bytes(big, le64(150ull << 20) + "{}");
  fs::resize_file(big, 200ull << 20);
  EXPECT_HD_ERROR(SafeTensorsFile::open(big), big, "exceeds the limit");
  // Within the cap but beyond the file.
  write_bytes(big, le64(90ull << 20) + "{}");
  fs::resize_file(big, 50ull << 20);
  EXPECT_HD_ERROR(SafeTensorsFile::open(big), big, "larger than the rest of the file");
}

struct BadCase {
  const char* what;
  std::string header;
  std::string data;
  const char* phrase;
};

TEST_F(SafeTensorsTest, MalformedHeadersGiveErrors) {
  const std::string f32x2 = entry("F32", "[2]", 0, 8);
  const std::string d8(8, '\0');
  std::string deep = "1";
  for (int i = 0; i < 40; ++i) deep = "[" + deep + "]";
  std::string rank65 = "[1";
  for (int i = 0; i < 64; ++i) rank65 += ",1";
  rank65 += "]";
  const std::vector<BadCase> cases = {
      {"truncated JSON", R"({"a":)", "", "invalid JSON"},
      {"trailing garbage", "{\"a\":" + f32x2 + "} x", d8, "invalid JSON"},
      {"two documents", "{}{}", "", "invalid JSON"},
      {"invalid UTF-8 in name", "{\"\xff\":" + f32x2 + "}", d8, "invalid JSON"},
      {"raw control character", "{\"a\nb\":" + f32x2 + "}", d8, "invalid JSON"},
      {"array root", "[1,2]", "", "not a JSON object"},
      {"string root", R"("x")", "", "not a JSON object"},
      {"null root", "null", "", "not a JSON object"},
      {"entry is a number", R"({"a":3})", "", "is not an object"},
      {"entry is an array", R"({"a":[1]})", "", "is not an object"},
      {"entry is null", R"({"a":null})", "", "is not an object"},
      {"missing dtype", R"({"a":{"shape":[2],"data_offsets":[0,8]}})", d8, "missing field \"dtype\""},
      {"missing shape", R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", d8, "missing field \"shape\""},
      {"missing offsets", R"({"a":{"dtype":"F32","shape":[2]}})", d8, "missing field \"data_offsets\""},
      {"dtype is a number", R"({"a":{"dtype":3,"shape":[2],"data_offsets":[0,8]}})", d8, "\"dtype\" must be a string"},
      {"dtype is an array", R"({"a":{"dtype":["F32"],"shape":[2],"data_offsets":[0,8]}})", d8, "\"dtype\" must be a string"},
      {"shape is a string", R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", d8, "\"shape\" must be"},
      {"shape is an object", R"({"a":{"dtype":"F32","shape":{},"data_offsets":[0,8]}})", d8, "\"shape\" must be"},
      {"fractional dim", R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", d8, "shape must be"},
      {"nested dim", R"({"a":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", d8, "shape must be"},
      {"string dim", R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", d8, "shape must be"},
      {"dim beyond uint64", R"({"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})", d8, "shape must be"},
      {"negative dim", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8, "negative dimension"},
      {"dim beyond int64", R"({"a":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}})", d8, "too large"},
      {"rank 65", "{\"a\":" + entry("F32", rank65, 0, 4) + "}", d8, "more than 64 dimensions"},
      {"offsets not an array", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":8}})", d8, "\"data_offsets\" must be"},
      {"one offset", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", d8, "exactly 2"},
      {"three offsets", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", d8, "exactly 2"},
      {"negative offset", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", d8, "negative value"},
      {"string offset", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}})", d8, "data_offsets must be"},
      {"unknown dtype", "{\"a\":" + entry("F128", "[2]", 0, 8) + "}", d8, "unknown dtype 'F128'"},
      {"lower-case dtype", "{\"a\":" + entry("f32", "[2]", 0, 8) + "}", d8, "unknown dtype"},
      {"unsupported dtype", "{\"a\":" + entry("U16", "[4]", 0, 8) + "}", d8, "not supported"},
      {"numel overflow", "{\"a\":" + entry("F32", "[4294967296,4294967296]", 0, 0) + "}", "", "overflow"},
      {"numel wraps to 0", "{\"a\":" + entry("U8", "[4294967296,4294967296,4294967296]", 0, 0) + "}", "", "overflow"},
      {"overflow hidden by a zero", "{\"a\":" + entry("U8", "[0,4611686018427387904,4]", 0, 0) + "}", "", "overflow"},
      {"byte size overflow", "{\"a\":" + entry("F64", "[4611686018427387904]", 0, 0) + "}", "", "overflow"},
      {"end before begin", "{\"a\":" + entry("F32", "[2]", 8, 0) + "}", d8 + d8, "end is before begin"},
      {"size mismatch", "{\"a\":" + entry("F32", "[2]", 0, 4) + "}", d8, "size mismatch"},
      {"size mismatch scalar", "{\"a\":" + entry("F32", "[]", 0, 8) + "}", d8, "size mismatch"},
      {"beyond data", "{\"a\":" + entry("F32", "[2]", 0, 8) + "}", "1234", "beyond the end of the data buffer"},
      {"far beyond data", "{\"a\":" + entry("U8", "[8]", 18446744073709551600ull, 18446744073709551608ull) + "}", d8, "beyond the end"},
      {"overlap", "{\"a\":" + f32x2 + ",\"b\":" + entry("F32", "[2]", 4, 12) + "}", d8 + d8, "overlap"},
      {"identical ranges", "{\"a\":" + f32x2 + ",\"b\":" + f32x2 + "}", d8, "overlap"},
      {"empty tensor inside another", "{\"a\":" + f32x2 + ",\"b\":" + entry("F32", "[0]", 4, 4) + "}", d8, "overlap"},
      {"duplicate name", "{\"a\":" + f32x2 + ",\"a\":" + entry("F32", "[2]", 8, 16) + "}", d8 + d8, "duplicate tensor name 'a'"},
      {"duplicate field", R"({"a":{"dtype":"F32","shape":[2],"dtype":"F64","data_offsets":[0,8]}})", d8, "duplicate field"},
      {"duplicate metadata key", R"({"__metadata__":{"k":"1","k":"2"}})", "", "duplicate key 'k'"},
      {"duplicate metadata", R"({"__metadata__":{},"__metadata__":{}})", "", "duplicate \"__metadata__\""},
      {"metadata is an array", R"({"__metadata__":["k"]})", "", "\"__metadata__\" is not an object"},
      {"metadata is a string", R"({"__metadata__":"k"})", "", "\"__metadata__\" is not an object"},
      {"metadata number value", R"({"__metadata__":{"k":1}})", "", "is not a string"},
      {"metadata null value", R"({"__metadata__":{"k":null}})", "", "is not a string"},
      {"metadata object value", R"({"__metadata__":{"k":{"x":"y"}}})", "", "is not a string"},
      {"deeply nested unknown field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":" + deep + "}}", d8, "nested too deeply"},
      {"BOOL byte 2", "{\"a\":" + entry("BOOL", "[2]", 0, 2) + "}", std::string("\x01\x02", 2), "BOOL data"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const BadCase& c = cases[i];
    SCOPED_TRACE(c.what);
    const auto p = tmp("bad" + std::to_string(i) + ".safetensors");
    write_bytes(p, file_bytes(c.header, c.data));
    expect_error([&] { open_and_load(p); }, p, c.phrase);
  }
}

TEST_F(SafeTensorsTest, MetadataEntryCountIsCapped) {
  std::string header = "{\"__metadata__\":{";
  for (int i = 0; i <= 65536; ++i) header += (i ? ",\"" : "\"") + std::to_string(i) + "\":\"\"";
  header += "}}";
  const auto p = tmp("meta.safetensors");
  write_bytes(p, file_bytes(header));
  EXPECT_HD_ERROR(SafeTensorsFile::open(p), p, "more than 65536 entries");
}

TEST_F(SafeTensorsTest, AbsentTensorNamesFileAndTensor) {
  const auto p = tmp("absent.safetensors");
  save_safetensors(p, {{"a", torch::ones({1})}});
  const auto file = SafeTensorsFile::open(p);
  EXPECT_FALSE(file.contains("b"));
  EXPECT_HD_ERROR(file.info("b"), p, "no tensor named 'b'");
  EXPECT_HD_ERROR(file.load("b"), p, "no tensor named 'b'");
}

TEST_F(SafeTensorsTest, HostileNamesAreEscapedInMessages) {
  const std::string name = "\x1b[31m" + std::string(1000, 'x');
  const auto p = tmp("hostile.safetensors");
  write_bytes(p, file_bytes("{\"\\u001b[31m" + std::string(1000, 'x') + "\":" + entry("F32", "[2]", 0, 4) + "}", "1234"));
  try {
    open_and_load(p);
    FAIL() << "no error";
  } catch (const hd::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\x1b'), std::string::npos) << "control character leaked into the message";
    EXPECT_NE(msg.find("\\x1b[31mxxx"), std::string::npos) << msg;
    EXPECT_LT(msg.size(), 600u) << "message not truncated";
  }
}

// Every proper prefix of a valid file is invalid (the last tensor is non-empty) and must be
// reported as hd::Error, never crash or read out of bounds.
TEST_F(SafeTensorsTest, EveryTruncationIsAnError) {
  const auto good = tmp("good.safetensors");
  save_safetensors(good,
                   {{"w", torch::arange(6, torch::kFloat).reshape({2, 3})},
                    {"s", torch::tensor(1, torch::kLong).reshape({})},
                    {"e", torch::empty({0}, torch::kHalf)},
                    {"b", torch::tensor({true, false, true})}},
                   {{"format", "pt"}});
  const std::string bytes = read_bytes(good);
  ASSERT_NO_THROW(open_and_load(good));
  const auto p = tmp("cut.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    SCOPED_TRACE("prefix length " + std::to_string(n));
    write_bytes(p, bytes.substr(0, n));
    expect_error([&] { open_and_load(p); }, p, "");
  }
}

// Random byte changes in the length prefix and header of a valid file must load or give
// hd::Error. Fixed seed: reproducible.
TEST_F(SafeTensorsTest, HeaderMutationsLoadOrThrow) {
  const auto good = tmp("good.safetensors");
  save_safetensors(good,
                   {{"w", torch::arange(6, torch::kFloat).reshape({2, 3})},
                    {"s", torch::tensor(1, torch::kLong).reshape({})},
                    {"e", torch::empty({0}, torch::kHalf)},
                    {"h", torch::ones({2, 2}, torch::kBFloat16)},
                    {"b", torch::tensor({true, false, true})}},
                   {{"format", "pt"}});
  const std::string bytes = read_bytes(good);
  const auto file = SafeTensorsFile::open(good);
  const size_t header_end = file.data_start();
  // Bytes that turn JSON into other valid-looking JSON are more interesting than random noise.
  const char kInteresting[] = "{}[]\",:-0123456789 eE.\\tnufl\x00\xff\x80";
  const std::string interesting(kInteresting, sizeof(kInteresting) - 1);  // keeps the NUL
  std::mt19937 rng(20240601);
  int loaded = 0, refused = 0;
  const auto p = tmp("mut.safetensors");
  for (int iter = 0; iter < 2000; ++iter) {
    std::string m = bytes;
    const int changes = 1 + static_cast<int>(rng() % 3);
    for (int c = 0; c < changes; ++c) {
      const size_t pos = rng() % header_end;
      switch (rng() % 3) {
        case 0: m[pos] = static_cast<char>(m[pos] ^ (1 << (rng() % 8))); break;
        case 1: m[pos] = static_cast<char>(rng() & 0xff); break;
        default: m[pos] = interesting[rng() % interesting.size()]; break;
      }
    }
    write_bytes(p, m);
    try {
      open_and_load(p);
      ++loaded;
    } catch (const hd::Error& e) {
      ++refused;
      EXPECT_EQ(std::string(e.what()).rfind(p, 0), 0u) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << iter << ": exception other than hd::Error: " << e.what();
    }
  }
  EXPECT_EQ(loaded + refused, 2000);
  EXPECT_GT(loaded, 0) << "some mutations (padding, metadata text) are harmless and must load";
  EXPECT_GT(refused, 1000) << "mutations should mostly break the header";
}

// ---------------------------------------------------------------------------------------------
// writer errors and atomicity

TEST_F(SafeTensorsTest, WriteIntoMissingDirectoryLeavesNothing) {
  const auto p = (dir_ / "no" / "such" / "dir.safetensors").string();
  EXPECT_HD_ERROR(save_safetensors(p, {{"a", torch::ones({2})}}), p, "cannot create");
  EXPECT_FALSE(fs::exists(dir_ / "no"));
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(SafeTensorsTest, InvalidArgumentsAreRefusedBeforeWriting) {
  const auto p = tmp("w.safetensors");
  EXPECT_HD_ERROR(save_safetensors(p, {{"c", torch::ones({2}, torch::kComplexFloat)}}), p, "cannot be stored");
  EXPECT_HD_ERROR(save_safetensors(p, {{"a", torch::ones({2})}, {"a", torch::ones({2})}}), p, "duplicate tensor name");
  EXPECT_HD_ERROR(save_safetensors(p, {{"__metadata__", torch::ones({2})}}), p, "reserved");
  EXPECT_HD_ERROR(save_safetensors(p, {{"u", torch::Tensor()}}), p, "undefined");
  EXPECT_HD_ERROR(save_safetensors(p, {{"s", torch::ones({2, 2}).to_sparse()}}), p, "dense");
  EXPECT_HD_ERROR(save_safetensors(p, {{"\xff", torch::ones({2})}}), p, "UTF-8");
  EXPECT_HD_ERROR(save_safetensors(p, {}, {{"k", "\xc3"}}), p, "UTF-8");
  EXPECT_TRUE(dir_entries().empty()) << "a refused save left files behind";
}

TEST_F(SafeTensorsTest, OverwriteReplacesAndFailedSaveKeepsOldFile) {
  const auto p = tmp("ckpt.safetensors");
  save_safetensors(p, {{"a", torch::ones({4})}, {"b", torch::zeros({2})}}, {{"v", "1"}});
  save_safetensors(p, {{"c", torch::full({3}, 2.0)}}, {{"v", "2"}});
  {
    const auto file = SafeTensorsFile::open(p);
    ASSERT_EQ(file.tensors().size(), 1u);
    EXPECT_EQ(file.tensors()[0].name, "c");
    EXPECT_EQ(file.metadata().at("v"), "2");
    EXPECT_TRUE(torch::equal(file.load("c"), torch::full({3}, 2.0)));
  }
  const std::string before = read_bytes(p);
  EXPECT_THROW(save_safetensors(p, {{"z", torch::ones({1}, torch::kComplexDouble)}}), hd::Error);
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(dir_entries(), std::vector<std::string>{"ckpt.safetensors"}) << "temporary file left behind";
}

TEST_F(SafeTensorsTest, OpenFileKeepsReadingAfterAtomicReplace) {
  const auto p = tmp("live.safetensors");
  save_safetensors(p, {{"a", torch::arange(4, torch::kFloat)}});
  const auto file = SafeTensorsFile::open(p);
  save_safetensors(p, {{"b", torch::zeros({1})}});  // renamed over p; the open fd keeps the old inode
  EXPECT_TRUE(torch::equal(file.load("a"), torch::arange(4, torch::kFloat)));
}

}  // namespace
