// torch.save / torch.jit.save files (see torch_file.h).
#include "io/torch_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>

#include <torch/torch.h>

#include "util/error.h"

namespace hd::io {

using pickle::Kind;
using pickle::StorageRef;
using pickle::Value;

namespace {

// The file's bytes, mapped read-only: storages are copied straight from the page cache into
// their tensors, so a multi-GiB checkpoint is never held twice.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(path + ": cannot open file");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error(path + ": not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (m == MAP_FAILED) {
        ::close(fd);
        throw Error(path + ": cannot map the file into memory");
      }
      data_ = static_cast<const char*>(m);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<char*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  const char* data_ = nullptr;
  uint64_t size_ = 0;
};

uint64_t little_endian(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

struct ZipEntry {
  uint64_t data = 0;  // offset of the entry's bytes in the file
  uint64_t size = 0;  // stored bytes
  bool stored = true;
};

// The entries of a zip archive, its structure checked: the end-of-central-directory record
// (zip64 where present), every central directory entry and its local header lie inside the
// file, and every entry's data before the central directory. Entries may be compressed
// (torch.jit.save deflates its code/ files) but only stored ones can be read.
std::map<std::string, ZipEntry> zip_entries(const char* bytes, uint64_t size, const std::string& path) {
  auto bad = [&](const std::string& what) -> Error {
    return Error(path + ": not a valid torch.save zip archive: " + what);
  };
  auto field = [&](uint64_t at, int n) -> uint64_t {
    if (at > size || static_cast<uint64_t>(n) > size - at) throw bad("truncated");
    return little_endian(bytes + at, n);
  };
  auto u16 = [&](uint64_t at) { return field(at, 2); };
  auto u32 = [&](uint64_t at) { return field(at, 4); };
  auto u64 = [&](uint64_t at) { return field(at, 8); };
  // End of central directory: 22 bytes plus a comment that must end exactly at the end of file.
  if (size < 22) throw bad("too short for a zip archive");
  uint64_t eocd = size;
  for (uint64_t i = size - 22;; --i) {
    if (u32(i) == 0x06054b50 && i + 22 + u16(i + 20) == size) {
      eocd = i;
      break;
    }
    if (i == 0 || size - i > 22 + 0xffff) break;
  }
  if (eocd == size) throw bad("no end-of-central-directory record (truncated file?)");
  uint64_t entries = u16(eocd + 10), cd_size = u32(eocd + 12), cd_offset = u32(eocd + 16);
  const bool zip64 = eocd >= 20 && u32(eocd - 20) == 0x07064b50;
  if (!zip64 && (entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff))
    throw bad("zip64 sizes without a zip64 locator");
  if (zip64) {
    const uint64_t z = u64(eocd - 12);
    if (z > eocd - 20 || eocd - 20 - z < 56 || u32(z) != 0x06064b50)
      throw bad("zip64 end-of-central-directory record out of place");
    entries = u64(z + 32);
    cd_size = u64(z + 40);
    cd_offset = u64(z + 48);
  }
  if (cd_offset > size || cd_size > size - cd_offset || cd_offset + cd_size > eocd)
    throw bad("central directory outside the file");
  if (entries == 0) throw bad("no entries");
  if (entries > cd_size / 46) throw bad("more entries than the central directory can hold");
  std::map<std::string, ZipEntry> out;
  uint64_t at = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t e = 0; e < entries; ++e) {
    if (at + 46 > cd_end || u32(at) != 0x02014b50)
      throw bad("central directory entry " + std::to_string(e) + " is malformed");
    const uint64_t method = u16(at + 10), flags = u16(at + 8);
    uint64_t csize = u32(at + 20), usize = u32(at + 24), local = u32(at + 42);
    const uint64_t name_len = u16(at + 28), extra_len = u16(at + 30), comment_len = u16(at + 32);
    const uint64_t next = at + 46 + name_len + extra_len + comment_len;
    if (next > cd_end) throw bad("central directory entry " + std::to_string(e) + " overruns the directory");
    const std::string name(bytes + at + 46, bytes + at + 46 + name_len);
    // zip64 extended information: 8-byte values for the fields set to 0xffffffff, in order.
    for (uint64_t x = at + 46 + name_len, xend = x + extra_len; x + 4 <= xend;) {
      const uint64_t id = u16(x), len = u16(x + 2);
      if (x + 4 + len > xend) throw bad("entry '" + name + "': malformed extra field");
      if (id == 1) {
        uint64_t f = x + 4;
        for (uint64_t* v : {&usize, &csize, &local}) {
          if (*v != 0xffffffff) continue;
          if (f + 8 > x + 4 + len) throw bad("entry '" + name + "': short zip64 field");
          *v = u64(f);
          f += 8;
        }
      }
      x += 4 + len;
    }
    if (flags & 1) throw bad("entry '" + name + "' is encrypted");
    if (local > cd_offset || cd_offset - local < 30 || u32(local) != 0x04034b50)
      throw bad("entry '" + name + "': local header out of place");
    const uint64_t data = local + 30 + u16(local + 26) + u16(local + 28);
    if (data > cd_offset || csize > cd_offset - data) throw bad("entry '" + name + "' extends past its data area");
    ZipEntry z;
    z.data = data;
    z.stored = method == 0 && csize == usize;
    z.size = csize;
    if (!out.emplace(name, z).second) throw bad("entry '" + name + "' appears twice");
    at = next;
  }
  return out;
}

void byteswap(char* p, uint64_t n, size_t elem) {
  if (elem <= 1) return;
  for (uint64_t i = 0; i < n; ++i, p += elem) std::reverse(p, p + elem);
}

}  // namespace

struct TorchFile::Impl {
  std::string path, format;
  std::shared_ptr<MappedFile> file;
  pickle::Document doc;
  bool big_endian = false;

  // Zip archives: PREFIX + "data/" + key. Legacy files: key -> where its elements start and
  // how many there are (with the element size they were read with).
  std::string prefix;
  std::map<std::string, ZipEntry> entries;
  struct Legacy {
    uint64_t data = 0;
    int64_t numel = 0;
    c10::ScalarType dtype = c10::ScalarType::Float;
  };
  std::map<std::string, Legacy> legacy;

  Error compressed(const std::string& entry) const {
    return Error(path + ": not a valid torch.save zip archive: entry '" + entry +
                 "' is compressed (torch.save writes stored entries)");
  }

  mutable std::mutex mu;
  mutable std::unordered_map<std::string, at::Tensor> storages;  // key -> 1-D tensor

  // The whole storage KEY as a 1-D tensor of `dtype` (legacy views: narrowed afterwards).
  at::Tensor storage(const StorageRef& s) const {
    std::lock_guard<std::mutex> lock(mu);
    auto it = storages.find(s.key);
    if (it != storages.end()) {
      if (it->second.scalar_type() != s.dtype)
        throw Error(path + ": storage '" + s.key + "' is read as two different types");
      return it->second;
    }
    const size_t elem = c10::elementSize(s.dtype);
    uint64_t begin = 0, numel = 0;
    std::string where;
    if (format == "torch_legacy") {
      auto l = legacy.find(s.key);
      if (l == legacy.end()) throw Error(path + ": storage '" + s.key + "' is not in the file");
      if (l->second.dtype != s.dtype) throw Error(path + ": storage '" + s.key + "' is read as two different types");
      begin = l->second.data;
      numel = static_cast<uint64_t>(l->second.numel);
      where = "storage '" + s.key + "'";
    } else {
      where = prefix + "data/" + s.key;
      auto e = entries.find(where);
      if (e == entries.end()) throw Error(path + ": " + where + ": no such entry in the archive");
      if (!e->second.stored) throw compressed(where);
      numel = static_cast<uint64_t>(s.numel);
      if (numel > e->second.size / elem)
        throw Error(path + ": " + where + ": " + std::to_string(numel) + " elements of " + std::to_string(elem) +
                    " bytes claimed, the entry holds " + std::to_string(e->second.size) + " bytes");
      begin = e->second.data;
    }
    auto t = torch::empty({static_cast<int64_t>(numel)}, torch::TensorOptions().dtype(s.dtype));
    char* dst = static_cast<char*>(t.data_ptr());
    if (numel) std::memcpy(dst, file->data() + begin, numel * elem);
    if (big_endian) byteswap(dst, numel, elem);
    if (s.dtype == c10::ScalarType::Bool)
      for (uint64_t i = 0; i < numel; ++i)
        if (static_cast<uint8_t>(dst[i]) > 1) throw Error(path + ": " + where + ": a bool that is neither 0 nor 1");
    storages.emplace(s.key, t);
    return t;
  }

  void open_zip() {
    entries = zip_entries(file->data(), file->size(), path);
    // The archive's record prefix: the folder of its one top-level data.pkl.
    for (const auto& [name, e] : entries) {
      const auto slash = name.find('/');
      if (slash == std::string::npos || name.compare(slash, std::string::npos, "/data.pkl") != 0) continue;
      if (!prefix.empty()) throw Error(path + ": not a valid torch.save zip archive: two data.pkl records");
      prefix = name.substr(0, slash + 1);
    }
    if (prefix.empty()) throw Error(path + ": not a valid torch.save zip archive: no data.pkl record");
    // torch.jit.save adds the module's code and constants.
    const auto code = entries.lower_bound(prefix + "code/");
    const bool has_code = code != entries.end() && code->first.rfind(prefix + "code/", 0) == 0;
    format = has_code || entries.count(prefix + "constants.pkl") ? "torchscript" : "torch";
    auto bo = entries.find(prefix + "byteorder");
    if (bo != entries.end()) {
      const std::string order = bo->second.stored ? std::string(file->data() + bo->second.data, bo->second.size) : "";
      if (order == "big") big_endian = true;
      else if (order != "little")
        throw Error(path + ": " + prefix + "byteorder: '" + order.substr(0, 16) + "' is neither 'little' nor 'big'");
    }
    const ZipEntry& pkl = entries.at(prefix + "data.pkl");
    if (!pkl.stored) throw compressed(prefix + "data.pkl");
    doc = pickle::parse(file->data() + pkl.data, pkl.size, path + ": " + prefix + "data.pkl");
  }

  // Five pickles, then the storages in the order of the keys pickle (see torch_file.h).
  void open_legacy() {
    format = "torch_legacy";
    const char* p = file->data();
    const uint64_t n = file->size();
    uint64_t at = 0;
    auto next = [&](const char* what) {
      auto d = pickle::parse(p + at, n - at, path + ": legacy torch.save " + std::string(what));
      at += d.consumed();
      return d;
    };
    {
      auto magic = next("magic number");
      // 0x1950a86a20f9469cfc6c, pickled as a 10-byte little-endian LONG1.
      static const char kMagic[] = "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
      if (magic.root().kind != Kind::BigInt || magic.root().s != std::string(kMagic, 10))
        throw Error(path + ": not a torch.save file (the legacy format's magic number is missing)");
    }
    {
      auto version = next("protocol version");
      if (version.root().kind != Kind::Int || version.root().i != 1001)
        throw Error(path + ": legacy torch.save protocol version other than 1001");
    }
    {
      auto info = next("system info");
      const Value* le = info.root().kind == Kind::Dict ? info.root().get("little_endian") : nullptr;
      if (le && le->kind == Kind::Bool) big_endian = false;  // storages are written little-endian either way
    }
    doc = next("object");
    auto keys = next("storage keys");
    if (keys.root().kind != Kind::List) throw Error(path + ": legacy torch.save storage keys are not a list");
    // The element type of each key, from the storages the object names.
    std::map<std::string, c10::ScalarType> types;
    for (const auto& v : doc.values())
      if (v->kind == Kind::Storage) {
        const auto& s = v->tensor.storage;
        auto [it, fresh] = types.emplace(s.key, s.dtype);
        if (!fresh && it->second != s.dtype) throw Error(path + ": storage '" + s.key + "' is read as two different types");
      }
    for (const Value* k : keys.root().items) {
      if (k->kind != Kind::Str) throw Error(path + ": a legacy storage key that is not a string");
      auto t = types.find(k->s);
      if (t == types.end()) throw Error(path + ": legacy storage '" + k->s + "' is not used by the object");
      if (n - at < 8) throw Error(path + ": legacy storage '" + k->s + "': truncated");
      const uint64_t numel = little_endian(p + at, 8);
      at += 8;
      const size_t elem = c10::elementSize(t->second);
      if (numel > (n - at) / elem)
        throw Error(path + ": legacy storage '" + k->s + "' claims " + std::to_string(numel) + " elements of " +
                    std::to_string(elem) + " bytes where " + std::to_string(n - at) + " bytes remain");
      if (!legacy.emplace(k->s, Legacy{at, static_cast<int64_t>(numel), t->second}).second)
        throw Error(path + ": legacy storage '" + k->s + "' appears twice");
      at += numel * elem;
    }
  }
};

TorchFile TorchFile::open(const std::string& path) {
  TorchFile f;
  f.impl_ = std::make_shared<Impl>();
  Impl& m = *f.impl_;
  m.path = path;
  m.file = std::make_shared<MappedFile>(path);
  const char* b = m.file->data();
  const uint64_t n = m.file->size();
  if (n >= 4 && std::memcmp(b, "PK\x03\x04", 4) == 0) m.open_zip();
  else if (n >= 2 && static_cast<uint8_t>(b[0]) == 0x80 && b[1] >= 2 && b[1] <= 5) m.open_legacy();
  else throw Error(path + ": not a torch.save file (neither a zip archive nor a pickle)");
  return f;
}

const std::string& TorchFile::path() const { return impl_->path; }
const std::string& TorchFile::format() const { return impl_->format; }
const pickle::Value& TorchFile::root() const { return impl_->doc.root(); }
const pickle::Document& TorchFile::document() const { return impl_->doc; }

at::Tensor TorchFile::tensor(const pickle::Value& v) const {
  if (v.kind != Kind::Tensor) throw Error(impl_->path + ": a " + v.type_name() + " where a tensor is expected");
  const auto& t = v.tensor;
  at::Tensor base = impl_->storage(t.storage);
  if (t.storage.view_offset > 0 || t.storage.numel != base.numel()) {
    // Legacy storage views; for zip archives only a storage shorter than its entry.
    if (t.storage.view_offset > base.numel() || t.storage.numel > base.numel() - t.storage.view_offset)
      throw Error(impl_->path + ": storage '" + t.storage.key + "': a view past its " + std::to_string(base.numel()) +
                  " elements");
    base = base.narrow(0, t.storage.view_offset, t.storage.numel);
  }
  // The unpickler checked the view against t.storage.numel, which `base` now has.
  return base.as_strided(t.sizes, t.strides, base.storage_offset() + t.offset);
}

bool is_script_module(const pickle::Value& v) {
  return v.kind == Kind::Object && v.s.rfind("__torch__.", 0) == 0 && v.state && v.state->kind == Kind::Dict;
}

namespace {

constexpr size_t kMaxNameLength = 1024;

struct Walk {
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::map<std::string, size_t> index;  // name -> position in out
  std::set<const Value*> seen;          // modules already walked
};

void collect(const TorchFile& f, const Value& v, const std::string& prefix, size_t depth, Walk& w,
             std::vector<std::string>* skipped) {
  if (depth > pickle::kMaxDepth)
    throw Error(f.path() + ": modules nested more than " + std::to_string(pickle::kMaxDepth) + " deep");
  // A module met again (shared, or a cycle a crafted file made) is walked once: its first name.
  if (!w.seen.insert(&v).second) return;
  const bool module = is_script_module(v);
  const Value& dict = module ? *v.state : v;
  for (const auto& [key, val] : dict.entries) {
    if (key->kind != Kind::Str) {
      if (skipped && !module) skipped->push_back("a " + key->type_name() + " key");
      continue;
    }
    const std::string name = prefix + key->s;
    if (val->kind == Kind::Tensor) {
      // Names are matched against regexes later (key layouts); real ones are < 200 characters.
      if (name.size() > kMaxNameLength)
        throw Error(f.path() + ": a tensor name of " + std::to_string(name.size()) + " characters (at most " +
                    std::to_string(kMaxNameLength) + ")");
      auto t = f.tensor(*val).contiguous();  // a view of its storage when it already is
      auto [it, fresh] = w.index.emplace(name, w.out.size());
      if (fresh) w.out.emplace_back(name, t);
      else w.out[it->second].second = t;  // a repeated key: the last one wins, as in Python
    } else if (module && is_script_module(*val)) {
      collect(f, *val, name + ".", depth + 1, w, skipped);
    } else if (skipped && !module) {
      skipped->push_back(key->s + " (" + val->type_name() + ")");
    }
  }
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> TorchFile::tensors_in(const pickle::Value& v,
                                                                      std::vector<std::string>* skipped) const {
  Walk w;
  if (v.kind == Kind::Dict || is_script_module(v)) collect(*this, v, "", 0, w, skipped);
  return std::move(w.out);
}

}  // namespace hd::io
