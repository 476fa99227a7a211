#include "data/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "util/error.h"
#include "util/format.h"

namespace hd::data {

namespace {

constexpr uint32_t kIdxImagesMagic = 0x00000803;  // uint8, 3 dimensions
constexpr uint32_t kIdxLabelsMagic = 0x00000801;  // uint8, 1 dimension
// One image side. Real IDX data sets use 28; this only rejects headers that are garbage.
constexpr uint32_t kMaxIdxSide = 1u << 16;

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

// gzFile with RAII and exact-size reads. zlib's gzread also reads files that are not gzip
// compressed (transparent mode), so one code path serves both ".gz" and plain IDX files.
class GzReader {
 public:
  static constexpr uint64_t kGrowStep = uint64_t{64} << 20;  // see read_payload

  explicit GzReader(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      throw Error(path + ": no such file" + (std::filesystem::exists(path, ec) ? " (not a regular file)" : ""));
    errno = 0;
    file_ = gzopen(path.c_str(), "rb");
    if (!file_) throw Error(path + ": cannot open: " + (errno ? std::strerror(errno) : "out of memory"));
    gzbuffer(file_, 1 << 20);  // fewer, larger reads: decompression dominates, not syscalls
    file_size_ = std::filesystem::file_size(path, ec);
    if (ec) file_size_ = 0;
  }
  ~GzReader() {
    if (file_) gzclose(file_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes; returns how many were read (less than n only at end of data).
  // Throws on decompression / IO errors.
  uint64_t read_some(void* dst, uint64_t n) {
    auto* out = static_cast<unsigned char*>(dst);
    uint64_t done = 0;
    while (done < n) {
      // gzread takes an unsigned int and returns an int: read in chunks well below INT_MAX.
      unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(n - done, 1u << 30));
      int got = gzread(file_, out + done, chunk);
      if (got < 0) throw Error(path_ + ": read failed: " + error_text());
      if (got == 0) {
        // End of data, or a truncated gzip stream which zlib reports through gzerror.
        int code = Z_OK;
        gzerror(file_, &code);
        if (code != Z_OK && code != Z_STREAM_END)
          throw Error(path_ + ": read failed after " + std::to_string(done) + " bytes: " + error_text());
        break;
      }
      done += static_cast<uint64_t>(got);
    }
    return done;
  }

  // Reads exactly n bytes of `what` or throws naming the file and how much was missing.
  void read_exact(void* dst, uint64_t n, const std::string& what) {
    uint64_t got = read_some(dst, n);
    if (got != n)
      throw Error(path_ + ": truncated: expected " + std::to_string(n) + " bytes of " + what + ", found " +
                  std::to_string(got));
  }

  uint32_t read_be32(const std::string& what) {
    unsigned char b[4];
    read_exact(b, 4, what);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }

  // Refuses, before anything is allocated, a payload the file cannot possibly hold: for a plain
  // file the remaining bytes are known exactly; deflate cannot expand data more than ~1032:1.
  // `consumed` is what the header took.
  void check_payload_fits(uint64_t payload, uint64_t consumed, const std::string& what) {
    if (file_size_ == 0) return;  // size unknown (e.g. a pipe): rely on the read checks
    const bool plain = gzdirect(file_) == 1;
    const uint64_t avail = file_size_ > consumed ? file_size_ - consumed : 0;
    if (plain && payload > avail)
      throw Error(path_ + ": truncated: header announces " + std::to_string(payload) + " bytes of " + what +
                  " but only " + std::to_string(avail) + " follow");
    if (!plain && payload / 1032 > file_size_)
      throw Error(path_ + ": truncated or corrupt: header announces " + std::to_string(payload) + " bytes of " + what +
                  ", more than a " + std::to_string(file_size_) + "-byte gzip file can hold");
  }

  // The payload as a uint8 tensor of `sizes` (`bytes` in all). Plain files were checked against
  // their exact size, so the tensor is allocated at once. A gzip stream can only be bounded
  // loosely (a few MiB of gzip may announce GiBs), so its buffer grows (doubling) as data
  // actually arrives: a lying header fails as truncated without ever having reserved more than
  // twice what was really there.
  torch::Tensor read_payload(const std::vector<int64_t>& sizes, uint64_t bytes, const std::string& what) {
    if (gzdirect(file_) == 1 || bytes <= kGrowStep) {
      torch::Tensor t = torch::empty(sizes, torch::kUInt8);
      read_exact(t.data_ptr<uint8_t>(), bytes, what);
      return t;
    }
    std::unique_ptr<uint8_t, void (*)(void*)> buf(nullptr, &std::free);
    uint64_t done = 0;
    while (done < bytes) {
      const uint64_t step = std::min<uint64_t>(bytes - done, std::max<uint64_t>(kGrowStep, done));
      void* grown = std::realloc(buf.get(), static_cast<size_t>(done + step));
      if (!grown) throw Error(path_ + ": out of memory reading " + what + " (" + human_bytes(done + step) + ")");
      buf.release();
      buf.reset(static_cast<uint8_t*>(grown));
      const uint64_t got = read_some(buf.get() + done, step);
      done += got;
      if (got != step)
        throw Error(path_ + ": truncated: expected " + std::to_string(bytes) + " bytes of " + what + ", found " +
                    std::to_string(done));
    }
    uint8_t* raw = buf.release();
    return torch::from_blob(raw, sizes, [](void* p) { std::free(p); }, torch::kUInt8);
  }

  // The payload must end exactly where the header says: extra bytes mean the header is wrong
  // (or the file is a concatenation of something else) and the data cannot be trusted.
  void expect_end(const std::string& what) {
    unsigned char probe[64];
    uint64_t extra = read_some(probe, sizeof(probe));
    if (extra != 0) {
      uint64_t more;
      do {
        more = read_some(probe, sizeof(probe));
        extra += more;
      } while (more != 0 && extra < (uint64_t{1} << 20));
      throw Error(path_ + ": trailing data: " + (extra >= (uint64_t{1} << 20) ? "over 1 MiB" : std::to_string(extra) + " bytes") +
                  " after the " + what + " announced by the header");
    }
  }

 private:
  std::string error_text() {
    int code = Z_OK;
    const char* msg = gzerror(file_, &code);
    if (code == Z_ERRNO) return std::strerror(errno);
    return msg && *msg ? msg : "unknown zlib error";
  }

  std::string path_;
  gzFile file_ = nullptr;
  uint64_t file_size_ = 0;
};

void check_magic(const std::string& path, uint32_t magic, uint32_t expected, const char* kind) {
  if (magic == expected) return;
  std::string hint;
  if ((magic >> 16) != 0)
    hint = " (not an IDX file)";
  else if (((magic >> 8) & 0xff) != 0x08)
    hint = " (element type " + hex32((magic >> 8) & 0xff) + ", only uint8 0x08 is supported)";
  else
    hint = " (" + std::to_string(magic & 0xff) + " dimensions)";
  throw Error(path + ": bad IDX magic " + hex32(magic) + hint + ", expected " + hex32(expected) + " for " + kind);
}

class IdxDataset final : public Dataset {
 public:
  IdxDataset(torch::Tensor images, torch::Tensor labels, std::vector<std::string> classes, std::string images_path,
             std::string name)
      : images_(std::move(images)),
        labels_(std::move(labels)),
        classes_(std::move(classes)),
        images_path_(std::move(images_path)),
        name_(std::move(name)) {
    labels_ptr_ = labels_.data_ptr<int64_t>();
  }

  size_t size() const override { return static_cast<size_t>(images_.size(0)); }

  int64_t label(size_t i) const override {
    check_index(i);
    return labels_ptr_[i];
  }

  torch::Tensor image(size_t i) const override {
    check_index(i);
    // A copy, not a view: callers may modify the result in place, and a view would also keep the
    // whole 47 MB data set alive through any tensor that escaped.
    return images_[static_cast<int64_t>(i)].unsqueeze(0).clone();
  }

  std::string source(size_t i) const override { return images_path_ + "#" + std::to_string(i); }
  std::vector<std::string> class_names() const override { return classes_; }
  std::string name() const override { return name_; }

 private:
  void check_index(size_t i) const {
    if (i >= size())
      throw Error(name_ + ": sample index " + std::to_string(i) + " out of range (size " + std::to_string(size()) + ")");
  }

  torch::Tensor images_;  // uint8 [N, rows, cols], loaded once, read-only afterwards
  torch::Tensor labels_;  // int64 [N]
  const int64_t* labels_ptr_ = nullptr;
  std::vector<std::string> classes_;
  std::string images_path_;
  std::string name_;
};

}  // namespace

torch::Tensor read_idx_images(const std::string& path) {
  GzReader in(path);
  uint32_t magic = in.read_be32("IDX header");
  check_magic(path, magic, kIdxImagesMagic, "uint8 3-D images");
  uint32_t count = in.read_be32("IDX header");
  uint32_t rows = in.read_be32("IDX header");
  uint32_t cols = in.read_be32("IDX header");
  if (count == 0) throw Error(path + ": IDX header announces no images");
  if (rows == 0 || cols == 0 || rows > kMaxIdxSide || cols > kMaxIdxSide)
    throw Error(path + ": implausible image size " + std::to_string(rows) + "x" + std::to_string(cols) +
                " in IDX header");
  // count < 2^32 and rows*cols <= 2^32, so the product fits in 64 bits.
  const uint64_t bytes = uint64_t{count} * rows * cols;
  if (bytes > kMaxIdxBytes)
    throw Error(path + ": IDX header announces " + std::to_string(count) + " images of " + std::to_string(rows) + "x" +
                std::to_string(cols) + " (" + human_bytes(bytes) + "), more than the " + human_bytes(kMaxIdxBytes) +
                " limit; the header is probably corrupt");
  in.check_payload_fits(bytes, 16, "pixel data");
  torch::Tensor images = in.read_payload({int64_t{count}, int64_t{rows}, int64_t{cols}}, bytes,
                                         "pixel data for " + std::to_string(count) + " images");
  in.expect_end(std::to_string(count) + " images");
  return images;
}

torch::Tensor read_idx_labels(const std::string& path) {
  GzReader in(path);
  uint32_t magic = in.read_be32("IDX header");
  check_magic(path, magic, kIdxLabelsMagic, "uint8 1-D labels");
  uint32_t count = in.read_be32("IDX header");
  if (count == 0) throw Error(path + ": IDX header announces no labels");
  // count < 2^32 is below kMaxIdxBytes; a count the file cannot hold is refused just below.
  in.check_payload_fits(count, 8, "labels");
  torch::Tensor raw = in.read_payload({int64_t{count}}, count, "labels for " + std::to_string(count) + " samples");
  in.expect_end(std::to_string(count) + " labels");
  return raw.to(torch::kInt64);
}

std::shared_ptr<Dataset> open_idx(const std::string& images_path, const std::string& labels_path,
                                  const std::vector<std::string>& class_names, const std::string& display_name) {
  torch::Tensor images = read_idx_images(images_path);
  torch::Tensor labels = read_idx_labels(labels_path);
  if (labels.size(0) != images.size(0))
    throw Error(labels_path + ": has " + std::to_string(labels.size(0)) + " labels but " + images_path + " has " +
                std::to_string(images.size(0)) + " images");
  const int64_t max_label = labels.max().item<int64_t>();
  std::vector<std::string> classes = class_names;
  if (classes.empty()) {
    for (int64_t c = 0; c <= max_label; ++c) classes.push_back(std::to_string(c));
  } else if (max_label >= static_cast<int64_t>(classes.size())) {
    int64_t where = labels.argmax().item<int64_t>();
    throw Error(labels_path + ": label " + std::to_string(max_label) + " (sample " + std::to_string(where) +
                ") is out of range for " + std::to_string(classes.size()) + " classes");
  }
  std::string name = display_name.empty() ? "idx:" + images_path : display_name;
  return std::make_shared<IdxDataset>(std::move(images), std::move(labels), std::move(classes), images_path,
                                      std::move(name));
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

std::shared_ptr<Dataset> open_fashion_mnist(const std::string& dir, const std::string& split) {
  std::string prefix;
  if (split == "train")
    prefix = "train";
  else if (split == "test" || split == "val")
    prefix = "t10k";
  else
    throw Error("fashion-mnist: unknown split '" + split + "' (expected train, val or test)");

  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw Error(dir + ": Fashion-MNIST folder not found (install the Debian package dataset-fashion-mnist, or pass "
                      "fashion-mnist:DIR)");
  // Prefer the distributed .gz files; accept them decompressed too (a common manual step).
  auto find = [&](const std::string& stem) {
    fs::path gz = fs::path(dir) / (stem + ".gz");
    if (fs::exists(gz, ec)) return gz.string();
    fs::path plain = fs::path(dir) / stem;
    if (fs::exists(plain, ec)) return plain.string();
    throw Error(gz.string() + ": Fashion-MNIST file not found (nor " + plain.filename().string() + ")");
  };
  std::string images = find(prefix + "-images-idx3-ubyte");
  std::string labels = find(prefix + "-labels-idx1-ubyte");
  return open_idx(images, labels, fashion_mnist_classes(), prefix == "train" ? "fashion-mnist/train" : "fashion-mnist/test");
}

}  // namespace hd::data
