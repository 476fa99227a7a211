// The torch.save / torch.jit.save reader (io/torch_file.h) and its restricted unpickler
// (io/pickle.h): files written by Debian's Python torch in every layout agree bit for bit with
// the same tensors in safetensors (tests/io/torch_files.py writes both; skipped without
// python3-torch), and hand-made malicious pickles and archives give hd::Errors.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "io/pickle.h"
#include "io/safetensors.h"
#include "io/torch_file.h"
#include "util/error.h"

using namespace hd;
using namespace hd::io;
namespace fs = std::filesystem;
using namespace std::string_literals;  // "...\x00..."s keeps its NUL bytes

namespace {

std::string tmp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / "hd_test_torch_file" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const hd::Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// The files of tests/io/torch_files.py, written once per test run; "" without python3-torch.
const std::string& python_files() {
  static const std::string dir = [] {
    // One folder per process: ctest runs the tests of this file in parallel processes.
    const std::string d = tmp_dir("python_" + std::to_string(::getpid()));
    const std::string cmd = "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 " + std::string(HD_SOURCE_DIR) +
                            "/tests/io/torch_files.py " + d + " >" + d + "/log.txt 2>&1";
    const int rc = fs::exists("/usr/bin/python3") ? std::system(cmd.c_str()) : -1;
    if (rc != 0 && WIFEXITED(rc) && WEXITSTATUS(rc) != 77) {
      std::ifstream log(d + "/log.txt");
      std::stringstream s;
      s << log.rdbuf();
      ADD_FAILURE() << "torch_files.py failed: " << s.str();
    }
    return rc == 0 ? d : std::string();
  }();
  return dir;
}

#define NEED_PYTHON()                                                            \
  if (python_files().empty()) GTEST_SKIP() << "no /usr/bin/python3 with torch"; \
  const std::string dir = python_files()

using Named = std::vector<std::pair<std::string, at::Tensor>>;

// Same names (in any order), dtypes, shapes and bits as the safetensors file.
void expect_same_as_safetensors(const Named& got, const std::string& st_path) {
  auto want = SafeTensorsFile::open(st_path);
  std::set<std::string> names;
  for (const auto& [k, t] : got) {
    names.insert(k);
    ASSERT_TRUE(want.contains(k)) << st_path << ": unexpected tensor " << k;
    auto w = want.load(k);
    EXPECT_EQ(t.scalar_type(), w.scalar_type()) << k;
    EXPECT_EQ(t.sizes(), w.sizes()) << k;
    EXPECT_TRUE(t.scalar_type() == w.scalar_type() && t.sizes() == w.sizes() && torch::equal(t, w)) << k;
  }
  for (const auto& info : want.tensors()) EXPECT_TRUE(names.count(info.name)) << st_path << ": missing " << info.name;
}

// ---------------------------------------------------------------------------------------------
// Hand-made pickles and archives.

std::string le(uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}
std::string str(const std::string& s) { return "X" + le(s.size(), 4) + s; }
std::string i64(int64_t v) { return "\x8a\x08" + le(static_cast<uint64_t>(v), 8); }  // LONG1, 8 bytes
std::string ints(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (auto x : v) s += i64(x);
  return s + "t";
}

// _rebuild_tensor_v2(pid('storage', torch.TYPE, KEY, 'cpu', NUMEL), OFFSET, SIZES, STRIDES, False, OrderedDict())
std::string tensor(const std::string& type, const std::string& key, int64_t numel, int64_t offset,
                   const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides) {
  return "ctorch._utils\n_rebuild_tensor_v2\n((" + str("storage") + "c" + type + "\n" + str(key) + str("cpu") +
         i64(numel) + "tQ" + i64(offset) + ints(sizes) + ints(strides) + "\x89" + "ccollections\nOrderedDict\n)Rt" +
         "R";
}

// {"w": VALUE} as a whole protocol-2 pickle.
std::string dict_of(const std::string& value, const std::string& key = "w") {
  return std::string("\x80\x02}(") + str(key) + value + "u.";
}

// A zip archive of stored entries, as torch.save writes (CRCs left zero: not checked).
std::string zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string body, cd;
  for (const auto& [name, data] : entries) {
    const uint64_t local = body.size();
    body += "PK\x03\x04" + le(20, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) + le(data.size(), 4) +
            le(data.size(), 4) + le(name.size(), 2) + le(0, 2) + name + data;
    cd += "PK\x01\x02" + le(20, 2) + le(20, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) + le(data.size(), 4) +
          le(data.size(), 4) + le(name.size(), 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) +
          le(local, 4) + name;
  }
  return body + cd + "PK\x05\x06" + le(0, 2) + le(0, 2) + le(entries.size(), 2) + le(entries.size(), 2) +
         le(cd.size(), 4) + le(body.size(), 4) + le(0, 2);
}

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::string write(const std::string& dir, const std::string& name, const std::string& bytes) {
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// Opens an archive of data.pkl = PICKLE and data/0 = DATA and reads every tensor of its root.
Named read_archive(const std::string& dir, const std::string& name, const std::string& pickle,
                   const std::string& data = floats({1, 2, 3, 4})) {
  const auto path = write(dir, name, zip({{"archive/data.pkl", pickle}, {"archive/data/0", data}}));
  auto f = TorchFile::open(path);
  return f.tensors_in(f.root());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST(TorchFile, EveryLayoutAgreesWithSafetensorsBitForBit) {
  NEED_PYTHON();
  struct Case {
    std::string name, format, entry;  // entry: the wrapper holding the tensors ("" = the top level)
  };
  for (const Case& c : {Case{"ordered", "torch", ""}, Case{"model_ordered_extras", "torch", "model"},
                        Case{"model_dict_alone", "torch", "model"}, Case{"state_dict", "torch", "state_dict"},
                        Case{"dtypes", "torch", ""}, Case{"views", "torch", ""}, Case{"parameters", "torch", ""},
                        Case{"big_endian", "torch", ""}, Case{"legacy", "torch_legacy", ""},
                        Case{"legacy_ordered", "torch_legacy", ""}, Case{"small_script", "torchscript", ""},
                        Case{"clip_script", "torchscript", ""}}) {
    SCOPED_TRACE(c.name);
    const std::string path = dir + "/" + c.name + (c.format == "torchscript" ? ".pt" : ".pth");
    auto f = TorchFile::open(path);
    EXPECT_EQ(f.format(), c.format);
    const pickle::Value* v = &f.root();
    if (!c.entry.empty()) v = v->get(c.entry);
    ASSERT_NE(v, nullptr);
    expect_same_as_safetensors(f.tensors_in(*v), dir + "/" + c.name + ".safetensors");
  }
}

TEST(TorchFile, OrderedDictsAndTheirMetadata) {
  NEED_PYTHON();
  auto f = TorchFile::open(dir + "/ordered.pth");
  EXPECT_EQ(f.root().kind, pickle::Kind::Dict);
  EXPECT_TRUE(f.root().ordered);
  EXPECT_EQ(f.root().type_name(), "collections.OrderedDict");
  ASSERT_NE(f.root().state, nullptr);  // state_dict()'s _metadata, kept aside
  std::vector<std::string> skipped;
  auto t = f.tensors_in(f.root(), &skipped);
  EXPECT_TRUE(skipped.empty());
  // The order of the file is kept.
  std::vector<std::string> names;
  for (const auto& [k, v] : t) names.push_back(k);
  EXPECT_EQ(names, (std::vector<std::string>{"steps", "fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight"}))
      << "buffers come first in Small's state dict? got " << ::testing::PrintToString(names);
}

TEST(TorchFile, SharedStoragesAndViewsShareTheirBytes) {
  NEED_PYTHON();
  auto f = TorchFile::open(dir + "/views.pth");
  Named t = f.tensors_in(f.root());
  auto get = [&](const std::string& k) {
    for (const auto& [n, v] : t)
      if (n == k) return v;
    throw std::runtime_error(k);
  };
  const auto base = get("base");
  EXPECT_TRUE(torch::equal(base, torch::arange(24, torch::kFloat)));
  // A contiguous view with an offset stays a view of the one storage read.
  EXPECT_EQ(get("offset").data_ptr<float>(), base.data_ptr<float>() + 5);
  EXPECT_TRUE(torch::equal(get("transposed"), base.view({4, 6}).t()));
  EXPECT_TRUE(get("transposed").is_contiguous());
  EXPECT_TRUE(torch::equal(get("strided"), base.view({4, 6}).slice(0, 1).slice(1, 0, 6, 2)));
  EXPECT_TRUE(torch::equal(get("expanded"), torch::zeros({3, 4})));
  // The raw value keeps the saved strides.
  const auto raw = f.tensor(*f.root().get("transposed"));
  EXPECT_EQ(raw.strides().vec(), (std::vector<int64_t>{1, 6}));
}

TEST(TorchFile, ExtrasNextToTheWeightsAreSkippedAndNamed) {
  NEED_PYTHON();
  auto f = TorchFile::open(dir + "/model_ordered_extras.pth");
  std::vector<std::string> skipped;
  EXPECT_TRUE(f.tensors_in(f.root(), &skipped).empty());
  std::string all;
  for (const auto& s : skipped) all += s + "; ";
  EXPECT_TRUE(has(all, "args (argparse.Namespace)")) << all;
  EXPECT_TRUE(has(all, "epoch (int)")) << all;
  EXPECT_TRUE(has(all, "optimizer (dict)")) << all;
  EXPECT_TRUE(has(all, "model (collections.OrderedDict)")) << all;
  // numpy scalars (where numpy was there to write them) are objects, never rebuilt.
  if (f.root().get("best_acc")) EXPECT_TRUE(has(all, "best_acc (numpy.")) << all;
  // The optimizer's momentum buffers are tensors like any other, read only when asked for.
  const auto* opt = f.root().get("optimizer");
  ASSERT_NE(opt, nullptr);
  const auto* state = opt->get("state");
  ASSERT_NE(state, nullptr);
  ASSERT_FALSE(state->entries.empty());
  const auto* momentum = state->entries[0].second->get("momentum_buffer");
  ASSERT_NE(momentum, nullptr);
  EXPECT_TRUE(torch::equal(f.tensor(*momentum), torch::ones(f.tensor(*momentum).sizes())));

  auto ns = TorchFile::open(dir + "/namespace.pth");
  EXPECT_EQ(ns.root().type_name(), "argparse.Namespace");
  EXPECT_TRUE(ns.tensors_in(ns.root()).empty());
}

TEST(TorchFile, TorchScriptModulesGiveDottedNamesNotCode) {
  NEED_PYTHON();
  auto f = TorchFile::open(dir + "/clip_script.pt");
  EXPECT_EQ(f.format(), "torchscript");
  ASSERT_TRUE(is_script_module(f.root()));
  std::set<std::string> names;
  for (const auto& [k, v] : f.tensors_in(f.root())) names.insert(k);
  for (const char* k : {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                        "visual.ln_pre.weight", "visual.transformer.resblocks.0.attn.in_proj_weight",
                        "visual.transformer.resblocks.1.attn.out_proj.bias", "visual.transformer.resblocks.1.mlp.c_fc.weight",
                        "visual.ln_post.bias", "visual.proj", "token_embedding.weight", "logit_scale"})
    EXPECT_TRUE(names.count(k)) << k;
  for (const auto& n : names) EXPECT_EQ(n.find("training"), std::string::npos) << n;
}

// ---------------------------------------------------------------------------------------------
TEST(TorchFilePickle, HandMadeArchivesLoad) {
  auto dir = tmp_dir("hand_made");
  auto t = read_archive(dir, "ok.pth", dict_of(tensor("torch\nFloatStorage", "0", 4, 1, {3}, {1})));
  ASSERT_EQ(t.size(), 1u);
  EXPECT_TRUE(torch::equal(t[0].second, torch::tensor({2.f, 3.f, 4.f})));
  // Where a CUDA run saved it: the bytes are the same.
  t = read_archive(dir, "cuda.pth", dict_of(tensor("torch.cuda\nFloatStorage", "0", 4, 0, {2, 2}, {1, 2})));
  ASSERT_EQ(t.size(), 1u);
  EXPECT_TRUE(torch::equal(t[0].second, torch::tensor({1.f, 3.f, 2.f, 4.f}).view({2, 2})));
  // A call of anything else is recorded, never made; the entry is skipped and named.
  const std::string evil = "cos\nsystem\n(" + str("echo pwned > " + dir + "/pwned") + "tR";
  auto path = write(dir, "evil.pth",
                    zip({{"archive/data.pkl", std::string("\x80\x02}(") + str("w") +
                                                  tensor("torch\nFloatStorage", "0", 4, 0, {4}, {1}) + str("evil") +
                                                  evil + "u."},
                         {"archive/data/0", floats({1, 2, 3, 4})}}));
  auto f = TorchFile::open(path);
  std::vector<std::string> skipped;
  EXPECT_EQ(f.tensors_in(f.root(), &skipped).size(), 1u);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_EQ(skipped[0], "evil (os.system)");
  EXPECT_FALSE(fs::exists(dir + "/pwned"));
}

TEST(TorchFilePickle, MaliciousPicklesGiveHdErrors) {
  auto dir = tmp_dir("malicious");
  struct Case {
    std::string name, pickle, data, what;
  };
  const std::string F = "torch\nFloatStorage";
  const std::string four = floats({1, 2, 3, 4});
  const std::vector<Case> cases = {
      {"offset_past_storage", dict_of(tensor(F, "0", 4, 10, {1}, {1})), four, "lies outside its storage '0' of 4"},
      {"stride_out_of_bounds", dict_of(tensor(F, "0", 4, 0, {2, 2}, {3, 1})), four, "last element 4"},
      {"negative_size", dict_of(tensor(F, "0", 4, 0, {-1}, {1})), four, "not a non-negative int"},
      {"negative_stride", dict_of(tensor(F, "0", 4, 3, {2}, {-1})), four, "not a non-negative int"},
      {"negative_offset", dict_of(tensor(F, "0", 4, -2, {2}, {1})), four, "storage offset"},
      {"size_overflow", dict_of(tensor(F, "0", 4, 0, {int64_t{1} << 40, int64_t{1} << 40}, {0, 0})), four,
       "element count overflows"},
      {"extent_overflow", dict_of(tensor(F, "0", int64_t{1} << 62, 0, {int64_t{1} << 40}, {int64_t{1} << 40})), four,
       "extent overflows"},
      {"expanded_past_storage", dict_of(tensor(F, "0", 4, 0, {int64_t{1} << 40}, {0})), four,
       "a view of 1099511627776 elements of a storage of 4"},
      {"sizes_strides_mismatch", dict_of(tensor(F, "0", 4, 0, {2, 2}, {1})), four, "2 sizes but 1 strides"},
      {"name_too_long", dict_of(tensor(F, "0", 4, 0, {4}, {1}), std::string(5000, 'k')), four,
       "a tensor name of 5000 characters"},
      {"numel_past_entry", dict_of(tensor(F, "0", 1000, 0, {1000}, {1})), four, "1000 elements of 4 bytes claimed"},
      {"negative_numel", dict_of(tensor(F, "0", -4, 0, {1}, {1})), four, "storage size"},
      {"missing_storage", dict_of(tensor(F, "7", 4, 0, {4}, {1})), four, "archive/data/7: no such entry"},
      {"unknown_storage_type", dict_of(tensor("torch\nComplexFloatStorage", "0", 2, 0, {2}, {1})), four,
       "unsupported storage type 'torch.ComplexFloatStorage'"},
      {"foreign_storage_type", dict_of(tensor("os\nFloatStorage", "0", 2, 0, {2}, {1})), four,
       "unsupported storage type 'os.FloatStorage'"},
      {"bad_bool", dict_of(tensor("torch\nBoolStorage", "0", 4, 0, {4}, {1})), std::string("\x01\x00\x02\x01", 4),
       "neither 0 nor 1"},
      {"memo_never_stored", "\x80\x02j\xff\xff\xff\xff.", four, "memo index 4294967295 was never stored"},
      {"binget_never_stored", "\x80\x02h\x05.", four, "memo index 5 was never stored"},
      {"string_length_4gib", "\x80\x02X\xff\xff\xff\xff" + std::string("abc"), four, "claims 4294967295 bytes"},
      {"bytes8_huge", "\x80\x02\x8e" + le(~uint64_t{0}, 8) + "ab", four, "claims 18446744073709551615 bytes"},
      {"long4_negative", "\x80\x02\x8b\xff\xff\xff\xff.", four, "negative length"},
      {"frame_past_end", "\x80\x04\x95" + le(1000, 8) + "N.", four, "a frame claims 1000 bytes"},
      {"text_opcode", "\x80\x02I12\n.", four, "unsupported pickle opcode (opcode 0x49)"},
      {"ext_opcode", "\x80\x02\x82\x01.", four, "(opcode 0x82)"},
      {"protocol_6", "\x80\x06N.", four, "protocol 6"},
      {"stack_underflow", "\x80\x02R.", four, "stack underflow"},
      {"no_mark", "\x80\x02Nt.", four, "no MARK"},
      {"no_stop", "\x80\x02}", four, "ends without STOP"},
      {"two_values", "\x80\x02NN.", four, "exactly one value"},
      {"setitem_on_list", "\x80\x02]NNs.", four, "SETITEM on a list"},
      {"append_to_dict", "\x80\x02}Na.", four, "APPEND to a dict"},
      {"odd_setitems", "\x80\x02}(Nu.", four, "odd number"},
      {"persid_other", "\x80\x02(" + str("module") + "tQ.", four, "persistent id other than"},
      {"rebuild_without_storage", "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n(NK\x00)))tR."s, four,
       "_rebuild_tensor_v2 with unexpected arguments"},
      {"parameter_of_none", "\x80\x02" "ctorch._utils\n_rebuild_parameter\n(N\x88)tR.", four, "other than a tensor"},
      {"call_of_int", "\x80\x02K\x01)R.", four, "a call of a int"},
      {"global_without_name", "\x80\x02" "cos\n\n.", four, "without a module or a name"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir + "/" + c.name + ".pth";
    const std::string msg = error_of([&] { read_archive(dir, c.name + ".pth", c.pickle, c.data); });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_TRUE(has(msg, c.what)) << msg;
  }
}

TEST(TorchFilePickle, NestingCyclesAndSizeStayBounded) {
  auto dir = tmp_dir("bounded");
  // 200000 nested lists: built without recursion, and no walker descends into lists.
  std::string deep = "\x80\x02";
  for (int i = 0; i < 200000; ++i) deep += "]";
  for (int i = 1; i < 200000; ++i) deep += "a";
  deep += ".";
  auto doc = pickle::parse(deep.data(), deep.size(), "deep");
  EXPECT_EQ(doc.root().kind, pickle::Kind::List);
  // 10^6 marks never closed.
  std::string marks = "\x80\x02" + std::string(1000000, '(') + ".";
  EXPECT_TRUE(has(error_of([&] { pickle::parse(marks.data(), marks.size(), "marks"); }), "exactly one value"));

  // A dict holding itself (through the memo) under a wrapper's name: no tensors, no loop.
  const std::string self = "\x80\x02}q\x00("s + str("model") + "h\x00"s + str("w") +
                           tensor("torch\nFloatStorage", "0", 4, 0, {4}, {1}) + "u.";
  auto t = read_archive(dir, "self.pth", self);
  EXPECT_EQ(t.size(), 1u);
  // TorchScript modules holding themselves, and one module shared twice: each walked once.
  const std::string mod = "\x80\x02" "c__torch__\nM\nq\x00)\x81q\x01}("s + str("me") + "h\x01" + str("again") +
                          "h\x01" + str("w") + tensor("torch\nFloatStorage", "0", 4, 0, {4}, {1}) + "ub.";
  t = read_archive(dir, "module_cycle.pth", mod);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].first, "w");
  // A chain of 150 modules: deeper than any model, refused.
  std::string chain = "\x80\x02";
  for (int i = 0; i < 150; ++i) chain += std::string("c__torch__\nM\n)\x81}(") + str("sub");
  chain += "N";
  for (int i = 0; i < 150; ++i) chain += "ub";
  chain += ".";
  EXPECT_TRUE(has(error_of([&] { read_archive(dir, "chain.pth", chain); }), "nested more than 100 deep"));
}

TEST(TorchFilePickle, DamagedArchivesAndLegacyFilesGiveHdErrors) {
  auto dir = tmp_dir("damaged");
  const std::string ok = dict_of(tensor("torch\nFloatStorage", "0", 4, 0, {4}, {1}));
  auto expect_error = [&](const std::string& name, const std::string& bytes, const std::string& what) {
    const auto path = write(dir, name, bytes);
    const auto msg = error_of([&] {
      auto f = TorchFile::open(path);
      f.tensors_in(f.root());
    });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << name << ": " << msg;
    EXPECT_TRUE(has(msg, what)) << name << ": " << msg;
  };
  expect_error("no_pkl.pth", zip({{"archive/data/0", floats({1})}}), "no data.pkl record");
  expect_error("two_pkl.pth", zip({{"a/data.pkl", ok}, {"b/data.pkl", ok}}), "two data.pkl records");
  expect_error("twice.pth", zip({{"archive/data.pkl", ok}, {"archive/data.pkl", ok}}), "appears twice");
  expect_error("byteorder.pth", zip({{"archive/data.pkl", ok}, {"archive/byteorder", "middle"}}),
               "neither 'little' nor 'big'");
  expect_error("empty.pth", "", "neither a zip archive nor a pickle");
  expect_error("text.pth", "hello", "neither a zip archive nor a pickle");
  const std::string archive = zip({{"archive/data.pkl", ok}, {"archive/data/0", floats({1, 2, 3, 4})}});
  expect_error("truncated.pth", archive.substr(0, archive.size() - 30), "no end-of-central-directory record");
  // Legacy: the magic number, then the rest checked in turn.
  const std::string magic = "\x80\x02\x8a\x0a" + std::string("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10) + ".";
  expect_error("legacy_magic.pth", "\x80\x02K\x01.", "magic number is missing");
  expect_error("legacy_version.pth", magic + "\x80\x02K\x01.", "protocol version other than 1001");
  const std::string head = magic + "\x80\x02M\xe9\x03." + "\x80\x02}.";
  const std::string obj = std::string("\x80\x02}(") + str("w") +
                          "ctorch._utils\n_rebuild_tensor_v2\n((" + str("storage") + "ctorch\nFloatStorage\n" +
                          str("k") + str("cpu") + i64(4) + "NtQ" + i64(0) + ints({4}) + ints({1}) + "\x89)tRu.";
  const std::string keys = std::string("\x80\x02]") + "(" + str("k") + "e.";
  expect_error("legacy_no_storage.pth", head + obj + keys, "legacy storage 'k': truncated");
  expect_error("legacy_short.pth", head + obj + keys + le(1000, 8) + floats({1, 2}),
               "claims 1000 elements of 4 bytes where 8 bytes remain");
  expect_error("legacy_unused.pth", head + obj + "\x80\x02](" + str("q") + "e.", "legacy storage 'q' is not used");
  // ... and a well-formed one reads.
  const auto path = write(dir, "legacy_ok.pth", head + obj + keys + le(4, 8) + floats({1, 2, 3, 4}));
  auto f = TorchFile::open(path);
  EXPECT_EQ(f.format(), "torch_legacy");
  auto t = f.tensors_in(f.root());
  ASSERT_EQ(t.size(), 1u);
  EXPECT_TRUE(torch::equal(t[0].second, torch::tensor({1.f, 2.f, 3.f, 4.f})));
}
