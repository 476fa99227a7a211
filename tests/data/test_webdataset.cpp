// WebDataset tar shards: the tar reader, shard specs, the round trip from a data set through
// write_shards, the shuffled order, the loader's split over ranks / workers and its resume on
// shards, and every bad-shard case with its message.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <torch/torch.h>

#include "data/data_test_util.h"
#include "data/image_codec.h"
#include "data/image_folder.h"
#include "data/loader.h"
#include "data/webdataset.h"
#include "io/tar.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace hd;
using namespace hd::data;
using hd::data::testing::SyntheticDataset;
using hd::data::testing::TempDir;

namespace {

// A tar archive from (name, content) pairs.
void write_tar(const std::string& path, const std::vector<std::pair<std::string, std::string>>& members) {
  atomic_write_file(path, [&](std::FILE* f) {
    io::TarWriter w(f);
    for (auto& [n, c] : members) w.add(n, c.data(), c.size());
    w.finish();
  });
}

std::string bytes_of(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

std::string tiny_jpeg(int v) {
  return bytes_of(encode_jpeg(torch::full({3, 8, 8}, v, torch::kUInt8)));
}

std::vector<io::TarMember> members_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  io::TarReader r(path, all.size(), [&](uint64_t off, void* buf, size_t n) { std::memcpy(buf, all.data() + off, n); });
  std::vector<io::TarMember> out;
  for (io::TarMember m; r.next(m);) out.push_back(m);
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// An image folder of 2 classes x 5 images, JPEG and PNG mixed, each image distinct.
std::string make_folder(const TempDir& tmp) {
  const std::string root = tmp.file("folder");
  for (int c = 0; c < 2; ++c) {
    fs::create_directories(root + "/class" + std::to_string(c));
    for (int i = 0; i < 5; ++i) {
      auto img = (torch::arange(3 * 12 * 10).view({3, 12, 10}) * (c * 5 + i + 1) % 256).to(torch::kUInt8);
      const std::string base = root + "/class" + std::to_string(c) + "/img" + std::to_string(i);
      if (i % 2) write_file_bytes(base + ".png", encode_png(img));
      else write_file_bytes(base + ".jpg", encode_jpeg(img));
    }
  }
  return root;
}

}  // namespace

TEST(Tar, WriterAndReaderAgreeAndPythonArchivesRead) {
  TempDir tmp;
  write_tar(tmp.file("a.tar"), {{"x.cls", "1"}, {"dir/y.jpg", std::string(513, 'y')}, {"empty", ""}});
  auto ms = members_of(tmp.file("a.tar"));
  ASSERT_EQ(ms.size(), 3u);
  EXPECT_EQ(ms[1].name, "dir/y.jpg");
  EXPECT_EQ(ms[1].size, 513u);
  EXPECT_EQ(ms[1].offset, 512u * 3);
  EXPECT_EQ(ms[2].size, 0u);

  // Python's tarfile: pax (the default) and GNU formats with a name longer than 100 bytes, a
  // directory entry and a symlink, which are passed over.
  const std::string long_name = "sub/" + std::string(150, 'k') + ".cls";
  for (const char* fmt : {"PAX_FORMAT", "GNU_FORMAT", "USTAR_FORMAT"}) {
    const std::string path = tmp.file(std::string(fmt) + ".tar");
    const std::string name = std::string(fmt) == "USTAR_FORMAT" ? "sub/" + std::string(120, 'u') + "/z.cls" : long_name;
    const std::string py =
        "import io, tarfile\n"
        "t = tarfile.open('" + path + "', 'w', format=tarfile." + fmt + ")\n"
        "d = tarfile.TarInfo('sub'); d.type = tarfile.DIRTYPE; t.addfile(d)\n"
        "i = tarfile.TarInfo('" + name + "'); i.size = 3; t.addfile(i, io.BytesIO(b'123'))\n"
        "l = tarfile.TarInfo('link'); l.type = tarfile.SYMTYPE; l.linkname = 'x'; t.addfile(l)\n"
        "t.close()\n";
    std::ofstream(tmp.file("make.py")) << py;
    ASSERT_EQ(std::system(("python3 " + tmp.file("make.py")).c_str()), 0) << fmt;
    ms = members_of(path);
    ASSERT_EQ(ms.size(), 1u) << fmt;
    EXPECT_EQ(ms[0].name, name) << fmt;
    EXPECT_EQ(ms[0].size, 3u) << fmt;
  }

  // Not a tar file; a corrupt header later on.
  std::ofstream(tmp.file("junk.tar")) << std::string(1024, 'j');
  auto junk = error_of([&] { members_of(tmp.file("junk.tar")); });
  EXPECT_TRUE(has(junk, "junk.tar: not a tar archive")) << junk;
  {
    std::fstream f(tmp.file("a.tar"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(512 * 2 + 10);
    f.put('#');
  }
  const auto e = error_of([&] { members_of(tmp.file("a.tar")); });
  EXPECT_TRUE(has(e, "a.tar: corrupt header (checksum mismatch) (tar header at offset 1024)")) << e;
}

TEST(WebDataset, ShardSpecForms) {
  TempDir tmp;
  for (const char* n : {"train-000.tar", "train-001.tar", "train-002.tar", "val-000.tar"}) write_tar(tmp.file(n), {});
  auto s = expand_shard_spec(tmp.file("{split}-{000..002}.tar#buffer=7"), "train");
  EXPECT_EQ(s.shards.size(), 3u);
  EXPECT_EQ(s.buffer, 7);
  EXPECT_EQ(expand_shard_spec(tmp.file("{split}-000.tar"), "val").shards, std::vector<std::string>{tmp.file("val-000.tar")});
  EXPECT_EQ(expand_shard_spec(tmp.file("train-{002,000}.tar"), "train").shards,
            (std::vector<std::string>{tmp.file("train-002.tar"), tmp.file("train-000.tar")}));
  EXPECT_EQ(expand_shard_spec(tmp.file("train-*.tar"), "train").shards.size(), 3u);
  std::ofstream(tmp.file("list.txt")) << "# shards\ntrain-001.tar\n\n  " << tmp.file("val-000.tar") << "\n";
  EXPECT_EQ(expand_shard_spec(tmp.file("list.txt"), "train").shards,
            (std::vector<std::string>{tmp.file("train-001.tar"), tmp.file("val-000.tar")}));
  // Errors name the spec and what is wrong.
  auto e = error_of([&] { expand_shard_spec(tmp.file("train-{0..2}.tar"), "train"); });
  EXPECT_TRUE(has(e, "shard '" + tmp.file("train-0.tar") + "' not found")) << e;
  e = error_of([&] { expand_shard_spec(tmp.file("train-{000..002.tar"), "train"); });
  EXPECT_TRUE(has(e, "unbalanced '{'")) << e;
  e = error_of([&] { expand_shard_spec(tmp.file("train-{002..000}.tar"), "train"); });
  EXPECT_TRUE(has(e, "empty range")) << e;
  e = error_of([&] { expand_shard_spec(tmp.file("nothing-*.tar"), "train"); });
  EXPECT_TRUE(has(e, "no shard matches")) << e;
  e = error_of([&] { expand_shard_spec(tmp.file("train-000.tar#buffer=x"), "train"); });
  EXPECT_TRUE(has(e, "is not a sample count")) << e;
}

TEST(WebDataset, RoundTripFromAnImageFolderAndFromDecodedImages) {
  TempDir tmp;
  auto folder = open_image_folder(make_folder(tmp));
  const std::string spec = write_shards(*folder, tmp.file("shards"), "train", 3);
  EXPECT_EQ(spec, tmp.file("shards") + "/train-{000000..000003}.tar");
  auto wds = open_dataset("wds:" + spec, "train");
  ASSERT_EQ(wds->size(), folder->size());
  EXPECT_EQ(wds->class_names(), folder->class_names()) << "from classes.txt";
  EXPECT_EQ(wds->name(), "wds:" + spec);
  for (size_t i = 0; i < wds->size(); ++i) {
    EXPECT_EQ(wds->label(i), folder->label(i)) << i;
    EXPECT_TRUE(torch::equal(wds->image(i), folder->image(i))) << i << ": the file's own bytes";
    const std::string ext = fs::path(folder->source(i)).extension().string();
    char key[16];
    std::snprintf(key, sizeof key, "%08zu", i);
    EXPECT_EQ(wds->source(i), tmp.file("shards") + "/train-00000" + std::to_string(i / 3) + ".tar#" + key + ext);
  }
  // Sources that are no image files are written as lossless PNG.
  SyntheticDataset synth(7, 3, 9, 11, 4);
  const std::string spec2 = write_shards(synth, tmp.file("synth"), "s", 100);
  EXPECT_EQ(spec2, tmp.file("synth") + "/s-000000.tar");
  auto back = open_webdataset(spec2, "train");
  ASSERT_EQ(back->size(), 7u);
  EXPECT_EQ(back->class_names(), synth.class_names());
  for (size_t i = 0; i < 7; ++i) {
    EXPECT_TRUE(torch::equal(back->image(i), synth.expected_image(i))) << i;
    EXPECT_EQ(back->label(i), synth.label(i));
  }
  // Without classes.txt the classes are 0 .. max label.
  fs::remove(tmp.file("synth/classes.txt"));
  EXPECT_EQ(open_webdataset(spec2, "train")->class_names(), (std::vector<std::string>{"0", "1", "2", "3"}));
}

TEST(WebDataset, ShuffledOrderIsDeterministicShardWiseAndBuffered) {
  const std::vector<int64_t> sizes{5, 0, 7, 3, 9};
  const int64_t n = 24;
  auto a = shard_buffer_order(sizes, 4, 1, 0);
  EXPECT_EQ(a, shard_buffer_order(sizes, 4, 1, 0));
  EXPECT_NE(a, shard_buffer_order(sizes, 4, 1, 1));
  EXPECT_NE(a, shard_buffer_order(sizes, 4, 2, 0));
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(sorted[static_cast<size_t>(i)], i);
  // Buffer 1: whole shards one after the other, each in its own order.
  auto b = shard_buffer_order(sizes, 1, 3, 0);
  std::vector<int64_t> firsts;
  for (size_t i = 0; i < b.size(); ++i) {
    if (i == 0 || b[i] != b[i - 1] + 1) firsts.push_back(b[i]);
  }
  EXPECT_LE(firsts.size(), 4u);
  for (int64_t f : firsts) EXPECT_TRUE(f == 0 || f == 5 || f == 12 || f == 15) << f;
  // A buffer larger than the data set: still every sample once.
  auto c = shard_buffer_order(sizes, 1000, 3, 0);
  std::sort(c.begin(), c.end());
  EXPECT_EQ(c, sorted);
  EXPECT_THROW(shard_buffer_order(sizes, 0, 0, 0), Error);
}

TEST(WebDataset, LoaderSplitsRanksAndWorkersAndResumes) {
  TempDir tmp;
  SyntheticDataset synth(48, 3, 8, 8, 4);
  auto wds = open_webdataset(write_shards(synth, tmp.file("s"), "train", 5) + "#buffer=6", "train");
  ASSERT_EQ(wds->size(), 48u);
  LoaderConfig lc;
  lc.batch_size = 4;
  lc.seed = 11;
  lc.transform.size = 8;
  lc.transform.train = true;
  lc.transform.scale_min = 1;  // keep the whole image: indices are what is compared
  auto epoch_indices = [&](LoaderConfig c, int64_t epoch, int64_t start = 0) {
    DataLoader loader(wds, c);
    loader.start_epoch(epoch, start);
    std::vector<std::vector<int64_t>> out;
    for (Batch b; loader.next(b);) {
      out.emplace_back(b.indices.data_ptr<int64_t>(), b.indices.data_ptr<int64_t>() + b.indices.numel());
    }
    return out;
  };
  auto one = epoch_indices(lc, 2);
  ASSERT_EQ(one.size(), 12u);
  // The loader follows the data set's shard-wise order.
  auto order = wds->shuffled_order(11, 2);
  EXPECT_EQ(std::vector<int64_t>(order.begin(), order.begin() + 4), one[0]);
  // Workers: the same batches for any count.
  for (int w : {0, 1, 3}) {
    auto c = lc;
    c.num_workers = w;
    EXPECT_EQ(epoch_indices(c, 2), one) << w << " workers";
  }
  // Ranks: disjoint, and together the batches of one process with the whole batch.
  std::vector<int64_t> all;
  for (int64_t r = 0; r < 2; ++r) {
    auto c = lc;
    c.batch_size = 2;
    c.world_size = 2;
    c.rank = r;
    for (auto& b : epoch_indices(c, 2)) all.insert(all.end(), b.begin(), b.end());
  }
  std::sort(all.begin(), all.end());
  EXPECT_TRUE(std::adjacent_find(all.begin(), all.end()) == all.end()) << "no sample twice";
  EXPECT_EQ(all.size(), 48u) << "every sample once";
  // Resume at batch 5 of the epoch: the rest of the same epoch.
  auto rest = epoch_indices(lc, 2, 5);
  EXPECT_EQ(rest, std::vector<std::vector<int64_t>>(one.begin() + 5, one.end()));
  // buffer=0: the uniform permutation of any data set.
  auto uniform = open_webdataset(tmp.file("s") + "/train-{000000..000009}.tar#buffer=0", "train");
  EXPECT_TRUE(uniform->shuffled_order(11, 2).empty());
}

TEST(WebDataset, BadShardsNameTheShardAndTheMemberOrAreSkipped) {
  TempDir tmp;
  const std::string jpg = tiny_jpeg(100);
  struct Case {
    std::string name;
    std::vector<std::pair<std::string, std::string>> members;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"nolabel", {{"a.jpg", jpg}, {"a.cls", "0"}, {"b.jpg", jpg}, {"c.jpg", jpg}, {"c.cls", "1"}},
       "nolabel.tar: member 'b.jpg' has no label (no 'b.cls' member)"},
      {"notimage", {{"a.jpg", jpg}, {"a.cls", "0"}, {"b.jpg", "just some text"}, {"b.cls", "1"}, {"c.jpg", jpg}, {"c.cls", "1"}},
       "notimage.tar: member 'b.jpg' is not a JPEG or PNG image"},
      {"noimage", {{"a.jpg", jpg}, {"a.cls", "0"}, {"b.txt", "caption"}, {"b.cls", "1"}, {"c.jpg", jpg}, {"c.cls", "1"}},
       "noimage.tar: sample 'b' has no .jpg/.jpeg/.png member (members: 'b.txt', 'b.cls')"},
      {"range", {{"a.jpg", jpg}, {"a.cls", "0"}, {"b.jpg", jpg}, {"b.cls", "5"}, {"c.jpg", jpg}, {"c.cls", "1"}},
       "range.tar: member 'b.cls': label 5 out of range [0, 2) (classes.txt)"},
      {"negative", {{"a.jpg", jpg}, {"a.cls", "0"}, {"b.jpg", jpg}, {"b.cls", "-1"}, {"c.jpg", jpg}, {"c.cls", "1"}},
       "negative.tar: member 'b.cls': label -1 out of range [0, 2)"},
      {"text", {{"a.jpg", jpg}, {"a.cls", "0"}, {"b.jpg", jpg}, {"b.cls", "cat"}, {"c.jpg", jpg}, {"c.cls", "1"}},
       "text.tar: member 'b.cls': label 'cat' is not an integer"},
  };
  for (const auto& c : cases) {
    const std::string dir = tmp.file(c.name);
    fs::create_directories(dir);
    std::ofstream(dir + "/classes.txt") << "zero\none\n";
    write_tar(dir + "/" + c.name + ".tar", c.members);
    const std::string spec = "wds:" + dir + "/" + c.name + ".tar";
    const auto e = error_of([&] { open_dataset(spec, "train"); });
    EXPECT_TRUE(has(e, c.message)) << c.name << ": " << e;
    auto ds = open_dataset(spec, "train", {/*skip_bad=*/true});
    ASSERT_EQ(ds->size(), 2u) << c.name;
    EXPECT_TRUE(has(ds->source(1), "#c.jpg")) << c.name;
    EXPECT_EQ(ds->label(1), 1) << c.name;
  }

  // A truncated shard: cut in the middle of the third sample's image.
  SyntheticDataset synth(5, 3, 16, 16, 2);
  const std::string spec = write_shards(synth, tmp.file("cut"), "train", 5);
  auto ms = members_of(spec);
  ASSERT_EQ(ms.size(), 10u);
  EXPECT_EQ(ms[4].name, "00000002.png");
  fs::resize_file(spec, ms[4].offset + ms[4].size / 2);
  auto e = error_of([&] { open_dataset("wds:" + spec, "train"); });
  EXPECT_TRUE(has(e, spec + ": truncated: member '00000002.png' has ")) << e;
  auto ds = open_dataset("wds:" + spec, "train", {true});
  EXPECT_EQ(ds->size(), 2u) << "the samples before the damage";

  // Damage the loader meets: a member with a JPEG signature that does not decode.
  const std::string dir = tmp.file("decode");
  fs::create_directories(dir);
  std::string broken = jpg.substr(0, jpg.size() / 2);
  write_tar(dir + "/d.tar", {{"a.jpg", jpg}, {"a.cls", "0"}, {"b.jpg", broken}, {"b.cls", "0"}});
  auto d = open_dataset("wds:" + dir + "/d.tar", "train");
  e = error_of([&] { d->image(1); });
  EXPECT_TRUE(has(e, dir + "/d.tar#b.jpg")) << e;
  LoaderConfig lc;
  lc.batch_size = 2;
  lc.shuffle = false;
  lc.drop_last = false;
  lc.transform.size = 8;
  lc.skip_bad = true;
  DataLoader loader(d, lc);
  loader.start_epoch(0);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.indices.numel(), 1);
  EXPECT_EQ(loader.skipped_total(), 1);
}
