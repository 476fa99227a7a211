#include "data/dataset.h"

#include <filesystem>

#include <torch/torch.h>

#include "data/idx.h"
#include "data/image_folder.h"
#include "data/webdataset.h"
#include "util/error.h"

namespace hd::data {

Dataset::~Dataset() = default;

std::vector<int64_t> Dataset::shuffled_order(uint64_t /*seed*/, int64_t /*epoch*/) const { return {}; }

std::optional<std::vector<uint8_t>> Dataset::encoded(size_t /*i*/) const { return std::nullopt; }

std::shared_ptr<Dataset> open_dataset(const std::string& spec, const std::string& split, const OpenOptions& options) {
  namespace fs = std::filesystem;
  if (split != "train" && split != "val" && split != "test")
    throw Error("dataset '" + spec + "': unknown split '" + split + "' (expected train, val or test)");

  const std::string fmnist = "fashion-mnist";
  if (spec == fmnist) return open_fashion_mnist(kDefaultFashionMnistDir, split);
  if (spec.rfind(fmnist + ":", 0) == 0) {
    const std::string dir = spec.substr(fmnist.size() + 1);
    if (dir.empty()) throw Error("dataset '" + spec + "': missing folder after 'fashion-mnist:'");
    return open_fashion_mnist(dir, split);
  }

  if (spec.rfind("wds:", 0) == 0) return open_webdataset(spec.substr(4), split, options.skip_bad);

  std::string dir = spec;
  if (spec.rfind("folder:", 0) == 0) dir = spec.substr(7);
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec))
    throw Error("dataset '" + spec +
                "': unknown data set (expected 'fashion-mnist', 'fashion-mnist:DIR', 'wds:SHARDS' or an existing image folder "
                "DIR with DIR/<class>/<images> or DIR/" + split + "/<class>/<images>)");
  const fs::path split_dir = fs::path(dir) / split;
  if (fs::is_directory(split_dir, ec)) return open_image_folder(split_dir.string());
  // A folder organised in splits but lacking the requested one must not silently be taken as a
  // class folder (its "classes" would be train/val/...).
  std::string others;
  for (const char* s : {"train", "val", "test"})
    if (fs::is_directory(fs::path(dir) / s, ec)) others += std::string(others.empty() ? "" : ", ") + s;
  if (!others.empty())
    throw Error(split_dir.string() + ": split folder not found (" + dir + " has: " + others + ")");
  return open_image_folder(dir);
}

}  // namespace hd::data
