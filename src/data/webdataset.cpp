#include "data/webdataset.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include <torch/torch.h>

#include "data/image_codec.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace hd::data {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kShardOrderSalt = 0x7764736f72646572ULL;  // "wdsorder"
constexpr size_t kMaxShards = 1000000;
constexpr size_t kProblemsKept = 10;  // problems listed when skipping

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// "{a..b}" numeric ranges and "{x,y}" lists, expanded left to right.
void expand_braces(const std::string& s, const std::string& spec, std::vector<std::string>& out) {
  const auto open = s.find('{');
  if (open == std::string::npos) {
    if (s.find('}') != std::string::npos) throw Error("wds:" + spec + ": unbalanced '}'");
    if (out.size() >= kMaxShards) throw Error("wds:" + spec + ": more than " + std::to_string(kMaxShards) + " shards");
    out.push_back(s);
    return;
  }
  const auto close = s.find('}', open);
  if (close == std::string::npos) throw Error("wds:" + spec + ": unbalanced '{'");
  const std::string body = s.substr(open + 1, close - open - 1), head = s.substr(0, open), tail = s.substr(close + 1);
  std::vector<std::string> items;
  const auto dots = body.find("..");
  if (dots != std::string::npos) {
    const std::string a = body.substr(0, dots), b = body.substr(dots + 2);
    auto digits = [](const std::string& x) {
      return !x.empty() && x.size() <= 18 && x.find_first_not_of("0123456789") == std::string::npos;
    };
    if (!digits(a) || !digits(b)) throw Error("wds:" + spec + ": '{" + body + "}' is not a range of non-negative integers");
    const int64_t lo = std::stoll(a), hi = std::stoll(b);
    if (hi < lo) throw Error("wds:" + spec + ": empty range '{" + body + "}'");
    if (static_cast<uint64_t>(hi - lo) >= kMaxShards)
      throw Error("wds:" + spec + ": more than " + std::to_string(kMaxShards) + " shards");
    const size_t width = (a.size() > 1 && a[0] == '0') || a.size() == b.size() ? a.size() : 0;
    for (int64_t v = lo; v <= hi; ++v) {
      std::string t = std::to_string(v);
      if (t.size() < width) t = std::string(width - t.size(), '0') + t;
      items.push_back(t);
    }
  } else {
    size_t p = 0;
    for (;;) {
      const auto comma = body.find(',', p);
      items.push_back(body.substr(p, comma == std::string::npos ? std::string::npos : comma - p));
      if (comma == std::string::npos) break;
      p = comma + 1;
    }
  }
  for (const auto& it : items) expand_braces(head + it + tail, spec, out);
}

bool has_glob(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

std::vector<std::string> expand_one(const std::string& pattern, const std::string& spec) {
  std::vector<std::string> braced, out;
  expand_braces(pattern, spec, braced);
  for (const auto& p : braced) {
    if (!has_glob(p)) {
      out.push_back(p);
      continue;
    }
    glob_t g{};
    const int rc = glob(p.c_str(), 0, nullptr, &g);
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) out.push_back(g.gl_pathv[i]);  // glob sorts
    globfree(&g);
    if (rc != 0) throw Error("wds:" + spec + ": no shard matches '" + p + "'");
  }
  return out;
}

// A shard file open for reads at offsets.
class ShardFile {
 public:
  explicit ShardFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw Error(path + ": cannot open shard: " + std::strerror(errno));
    struct stat st{};
    if (fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw Error(path + ": not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~ShardFile() { ::close(fd_); }
  ShardFile(const ShardFile&) = delete;
  ShardFile& operator=(const ShardFile&) = delete;

  uint64_t size() const { return size_; }
  void read(uint64_t offset, void* buf, size_t n) const {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
      const ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0)
        throw Error(path_ + ": read failed at offset " + std::to_string(offset) + ": " +
                    (got < 0 ? std::strerror(errno) : "unexpected end of file"));
      p += got;
      n -= static_cast<size_t>(got);
      offset += static_cast<uint64_t>(got);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

class WebDataset final : public Dataset {
 public:
  struct Entry {
    uint64_t offset, size;
    uint64_t name_pos;  // into names_ (NUL-separated)
    int32_t shard, label;
  };

  WebDataset(std::string spec, std::vector<std::string> shards, std::vector<int64_t> shard_sizes,
             std::vector<Entry> entries, std::string names, std::vector<std::string> classes, int64_t buffer)
      : spec_(std::move(spec)),
        shards_(std::move(shards)),
        shard_sizes_(std::move(shard_sizes)),
        entries_(std::move(entries)),
        names_(std::move(names)),
        classes_(std::move(classes)),
        buffer_(buffer) {}

  size_t size() const override { return entries_.size(); }
  int64_t label(size_t i) const override { return entry(i).label; }
  torch::Tensor image(size_t i) const override {
    const std::vector<uint8_t> bytes = *encoded(i);
    return decode_image(bytes.data(), bytes.size(), source(i));
  }
  std::optional<std::vector<uint8_t>> encoded(size_t i) const override {
    const Entry& e = entry(i);
    ShardFile f(shards_[static_cast<size_t>(e.shard)]);
    if (e.offset + e.size > f.size())
      throw Error(source(i) + ": the shard is shorter than when it was opened (" + std::to_string(f.size()) + " bytes)");
    std::vector<uint8_t> bytes(e.size);
    f.read(e.offset, bytes.data(), bytes.size());
    return bytes;
  }
  std::string source(size_t i) const override {
    const Entry& e = entry(i);
    return shards_[static_cast<size_t>(e.shard)] + "#" + std::string(names_.c_str() + e.name_pos);
  }
  std::vector<std::string> class_names() const override { return classes_; }
  std::string name() const override { return "wds:" + spec_; }
  std::vector<int64_t> shuffled_order(uint64_t seed, int64_t epoch) const override {
    if (buffer_ == 0) return {};
    return shard_buffer_order(shard_sizes_, buffer_, seed, epoch);
  }

 private:
  const Entry& entry(size_t i) const {
    if (i >= entries_.size())
      throw Error(name() + ": sample index " + std::to_string(i) + " out of range (size " +
                  std::to_string(entries_.size()) + ")");
    return entries_[i];
  }

  std::string spec_;
  std::vector<std::string> shards_;
  std::vector<int64_t> shard_sizes_;
  std::vector<Entry> entries_;
  std::string names_;
  std::vector<std::string> classes_;
  int64_t buffer_;
};

std::vector<std::string> read_classes(const std::string& path) {
  std::error_code ec;
  const auto bytes = fs::file_size(path, ec);
  if (ec) throw Error(path + ": cannot read: " + ec.message());
  if (bytes > (uint64_t{64} << 20)) throw Error(path + ": larger than 64 MiB; not a class list");
  std::ifstream in(path);
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    names.push_back(line);
  }
  while (!names.empty() && names.back().empty()) names.pop_back();
  if (names.empty()) throw Error(path + ": no class names");
  if (static_cast<int64_t>(names.size()) > kMaxShardClasses)
    throw Error(path + ": more than " + std::to_string(kMaxShardClasses) + " classes");
  return names;
}

}  // namespace

ShardSpec expand_shard_spec(const std::string& spec_in, const std::string& split) {
  ShardSpec out;
  std::string spec = spec_in;
  const auto hash = spec.rfind("#buffer=");
  if (hash != std::string::npos) {
    const std::string n = spec.substr(hash + 8);
    if (n.empty() || n.size() > 9 || n.find_first_not_of("0123456789") != std::string::npos)
      throw Error("wds:" + spec_in + ": '#buffer=" + n + "' is not a sample count");
    out.buffer = std::stoll(n);
    spec = spec.substr(0, hash);
  }
  for (size_t p; (p = spec.find("{split}")) != std::string::npos;) spec.replace(p, 7, split);
  if (spec.empty()) throw Error("wds:" + spec_in + ": no shards given");

  std::vector<std::string> shards;
  std::error_code ec;
  if (lower(fs::path(spec).extension().string()) == ".txt" && !has_glob(spec) && spec.find('{') == std::string::npos) {
    std::ifstream in(spec);
    if (!in) throw Error(spec + ": cannot open shard list");
    const fs::path base = fs::path(spec).parent_path();
    int64_t line_no = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_no;
      const auto b = line.find_first_not_of(" \t\r"), e = line.find_last_not_of(" \t\r");
      if (b == std::string::npos || line[b] == '#') continue;
      line = line.substr(b, e - b + 1);
      const std::string path = fs::path(line).is_absolute() ? line : (base / line).string();
      for (auto& s : expand_one(path, spec + " line " + std::to_string(line_no))) shards.push_back(s);
      if (shards.size() > kMaxShards) throw Error(spec + ": more than " + std::to_string(kMaxShards) + " shards");
    }
    if (shards.empty()) throw Error(spec + ": the shard list names no shard");
  } else {
    shards = expand_one(spec, spec_in);
  }
  for (const auto& s : shards)
    if (!fs::is_regular_file(s, ec)) throw Error("wds:" + spec_in + ": shard '" + s + "' not found");
  out.shards = std::move(shards);
  return out;
}

std::shared_ptr<Dataset> open_webdataset(const std::string& spec, const std::string& split, bool skip_bad) {
  const ShardSpec ss = expand_shard_spec(spec, split);
  std::vector<std::string> classes;
  const fs::path classes_file = fs::path(ss.shards.front()).parent_path() / "classes.txt";
  std::error_code ec;
  const bool have_classes = fs::is_regular_file(classes_file, ec);
  if (have_classes) classes = read_classes(classes_file.string());

  std::vector<WebDataset::Entry> entries;
  std::vector<int64_t> shard_sizes;
  std::string names;
  int64_t skipped = 0, damaged = 0, max_label = -1;
  std::vector<std::string> problems;
  for (size_t s = 0; s < ss.shards.size(); ++s) {
    const std::string& path = ss.shards[s];
    ShardFile f(path);
    auto scan = scan_shard(path, f.size(), [&](uint64_t off, void* buf, size_t n) { f.read(off, buf, n); },
                           static_cast<int64_t>(classes.size()), skip_bad);
    skipped += scan.skipped;
    damaged += scan.truncated;
    for (auto& p : scan.problems)
      if (problems.size() < kProblemsKept) problems.push_back(p);
    for (const auto& smp : scan.samples) {
      entries.push_back({smp.offset, smp.size, names.size(), static_cast<int32_t>(s), static_cast<int32_t>(smp.label)});
      names += smp.member;
      names.push_back('\0');
      max_label = std::max(max_label, smp.label);
    }
    shard_sizes.push_back(static_cast<int64_t>(scan.samples.size()));
  }
  if (skipped || damaged) {
    std::cerr << "warning: wds:" << spec << ": skipped " << skipped << " bad sample(s)"
              << (damaged ? " and the damaged end of " + std::to_string(damaged) + " shard(s)" : std::string()) << ":\n";
    for (auto& p : problems) std::cerr << "  " << p << "\n";
  }
  if (entries.empty()) throw Error("wds:" + spec + ": the shards hold no usable sample");
  if (!have_classes)
    for (int64_t c = 0; c <= max_label; ++c) classes.push_back(std::to_string(c));
  return std::make_shared<WebDataset>(spec, ss.shards, std::move(shard_sizes), std::move(entries), std::move(names),
                                      std::move(classes), ss.buffer);
}

std::vector<int64_t> shard_buffer_order(const std::vector<int64_t>& shard_sizes, int64_t buffer, uint64_t seed,
                                        int64_t epoch) {
  if (buffer < 1) throw Error("shuffle buffer must hold at least one sample");
  std::vector<int64_t> first(shard_sizes.size());
  int64_t n = 0;
  for (size_t s = 0; s < shard_sizes.size(); ++s) {
    first[s] = n;
    n += shard_sizes[s];
  }
  std::mt19937_64 rng(splitmix64(splitmix64(seed ^ kShardOrderSalt) ^ static_cast<uint64_t>(epoch)));
  std::vector<int64_t> shards(shard_sizes.size());
  for (size_t s = 0; s < shards.size(); ++s) shards[s] = static_cast<int64_t>(s);
  for (int64_t i = static_cast<int64_t>(shards.size()) - 1; i > 0; --i) std::swap(shards[i], shards[uniform_int(rng, i + 1)]);

  std::vector<int64_t> out, buf;
  out.reserve(static_cast<size_t>(n));
  buf.reserve(static_cast<size_t>(std::min(buffer, n)));
  for (int64_t s : shards)
    for (int64_t i = first[s]; i < first[s] + shard_sizes[s]; ++i) {
      if (static_cast<int64_t>(buf.size()) < buffer) {
        buf.push_back(i);
        continue;
      }
      const auto k = static_cast<size_t>(uniform_int(rng, buffer));
      out.push_back(buf[k]);
      buf[k] = i;
    }
  while (!buf.empty()) {
    const auto k = static_cast<size_t>(uniform_int(rng, static_cast<int64_t>(buf.size())));
    out.push_back(buf[k]);
    buf[k] = buf.back();
    buf.pop_back();
  }
  return out;
}

std::string write_shards(const Dataset& ds, const std::string& dir, const std::string& prefix, int64_t per_shard) {
  if (per_shard < 1) throw Error("write_shards: samples per shard must be >= 1");
  if (prefix.empty() || prefix.find('/') != std::string::npos)
    throw Error("write_shards: the shard prefix '" + prefix + "' must be a plain file name");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the shard folder: " + ec.message());
  const auto n = static_cast<int64_t>(ds.size());
  if (n == 0) throw Error(ds.name() + ": no sample to write");
  const int64_t count = (n + per_shard - 1) / per_shard;
  auto shard_name = [&](int64_t s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%06lld", static_cast<long long>(s));
    return std::string(buf);
  };
  for (int64_t s = 0; s < count; ++s) {
    const std::string path = (fs::path(dir) / (prefix + "-" + shard_name(s) + ".tar")).string();
    atomic_write_file(path, [&](std::FILE* f) {
      io::TarWriter w(f);
      for (int64_t i = s * per_shard; i < std::min(n, (s + 1) * per_shard); ++i) {
        const auto ui = static_cast<size_t>(i);
        const std::string src = ds.source(ui);
        std::string ext = lower(fs::path(src).extension().string());
        std::vector<uint8_t> bytes;
        if ((ext == ".jpg" || ext == ".jpeg" || ext == ".png") && fs::is_regular_file(src, ec)) {
          bytes = read_file_bytes(src);
        } else {
          bytes = encode_png(ds.image(ui));
          ext = ".png";
        }
        char key[32];
        std::snprintf(key, sizeof key, "%08lld", static_cast<long long>(i));
        const std::string label = std::to_string(ds.label(ui));
        w.add(key + ext, bytes.data(), bytes.size());
        w.add(std::string(key) + ".cls", label.data(), label.size());
      }
      w.finish();
    });
  }
  const auto classes = ds.class_names();
  atomic_write_file((fs::path(dir) / "classes.txt").string(), [&](std::FILE* f) {
    for (const auto& c : classes)
      if (std::fprintf(f, "%s\n", c.c_str()) < 0) throw Error("write failed");
  });
  const std::string base = (fs::path(dir) / prefix).string() + "-";
  return count == 1 ? base + shard_name(0) + ".tar" : base + "{" + shard_name(0) + ".." + shard_name(count - 1) + "}.tar";
}

}  // namespace hd::data
