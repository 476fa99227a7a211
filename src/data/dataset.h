// The data-set abstraction shared by every source of training / evaluation images
// (IDX files such as Fashion-MNIST, image folders) and the spec-string factory the CLI uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

namespace hd::data {

// A random-access, read-only collection of labelled images.
//
// Implementations must make every const method safe to call concurrently from several threads:
// the DataLoader's workers call image() / label() / source() in parallel without locking.
class Dataset {
 public:
  virtual ~Dataset();

  virtual size_t size() const = 0;

  // Class index in [0, class_names().size()).
  virtual int64_t label(size_t i) const = 0;

  // The decoded image as uint8 [C,H,W], contiguous, owned by the caller (modifying it never
  // changes the data set). Throws hd::Error naming the file (see source()) when the image
  // cannot be read or decoded.
  virtual torch::Tensor image(size_t i) const = 0;

  // The sample's encoded file (JPEG / PNG bytes) for sources that hold images as files (image
  // folders, tar shards), so that a loader can decode and transform in one step
  // (decode_transform.h); std::nullopt (the default) for sources that hold pixels. Same errors
  // as image().
  virtual std::optional<std::vector<uint8_t>> encoded(size_t i) const;

  // Where sample i comes from, for messages: a path, or "file.gz#123" for packed formats.
  virtual std::string source(size_t i) const = 0;

  virtual std::vector<std::string> class_names() const = 0;

  // Short human-readable description, e.g. "fashion-mnist/train" or "image-folder:/data/x".
  virtual std::string name() const = 0;

  // The sample order of a shuffled epoch, a permutation of [0, size()) that depends only on
  // (seed, epoch). Empty (the default): a uniform permutation (epoch_permutation in loader.h).
  // Sources best read sequentially (tar shards) give an order that moves forward through files.
  virtual std::vector<int64_t> shuffled_order(uint64_t seed, int64_t epoch) const;
};

struct OpenOptions {
  // Sources checked when opened (tar shards): drop and count bad samples instead of failing.
  bool skip_bad = false;
};

// Opens a data set from a spec string, as given on the command line:
//   "fashion-mnist"        Fashion-MNIST from /usr/share/datasets/fashion-mnist (Debian package
//                          dataset-fashion-mnist);
//   "fashion-mnist:DIR"    Fashion-MNIST IDX files in DIR;
//   "wds:SHARDS"           WebDataset tar shards (see webdataset.h): a brace pattern
//                          (train-{000000..000146}.tar), a list file (.txt) or a glob; "{split}"
//                          in SHARDS is replaced by the split;
//   "DIR" or "folder:DIR"  an image folder (DIR/<class>/<images>); if DIR/<split> exists it is
//                          used, otherwise DIR itself (then every split sees the same images).
// split is "train", "val" or "test". Fashion-MNIST has no validation split: "val" and "test"
// both give the 10,000-image t10k set.
// Throws hd::Error for an unknown spec / split or anything that fails to open.
std::shared_ptr<Dataset> open_dataset(const std::string& spec, const std::string& split, const OpenOptions& options = {});

}  // namespace hd::data
