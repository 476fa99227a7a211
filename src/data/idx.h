// IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or plain.
//
// Layout: a 4-byte big-endian magic 0x0000TTNN (TT = element type, 0x08 = uint8; NN = number of
// dimensions), NN big-endian uint32 dimensions, then the elements in row-major order. We accept
// exactly uint8 3-D image files (magic 0x00000803: count, rows, cols) and uint8 1-D label files
// (magic 0x00000801: count). Everything is validated before anything large is allocated, and the
// payload must have exactly the announced size: truncated files and trailing bytes are errors.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "data/dataset.h"

namespace hd::data {

// Largest payload we agree to load (images file): far above any IDX data set in use, small
// enough that a corrupt header cannot make us allocate the whole machine.
constexpr uint64_t kMaxIdxBytes = uint64_t{8} << 30;  // 8 GiB

// Reads an IDX uint8 image file into a uint8 tensor [count, rows, cols].
// Throws hd::Error naming `path` on any problem (missing, bad magic, bad dims, truncated, trailing
// data, decompression error).
torch::Tensor read_idx_images(const std::string& path);

// Reads an IDX uint8 label file into an int64 tensor [count].
torch::Tensor read_idx_labels(const std::string& path);

// An images file plus a labels file with the same count. If class_names is not empty every label
// must be smaller than its size; if it is empty the classes are named "0", "1", ... up to the
// largest label. `display_name` is what name() returns (defaults to the images path).
std::shared_ptr<Dataset> open_idx(const std::string& images_path, const std::string& labels_path,
                                  const std::vector<std::string>& class_names,
                                  const std::string& display_name = "");

constexpr const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// The ten Fashion-MNIST class names, in label order.
const std::vector<std::string>& fashion_mnist_classes();

// Fashion-MNIST from `dir`: split "train" (60,000 images) or "test" (10,000; "val" is accepted as
// an alias because the data set has no separate validation split). Looks for the usual
// "train-images-idx3-ubyte.gz" names and falls back to the uncompressed names.
std::shared_ptr<Dataset> open_fashion_mnist(const std::string& dir = kDefaultFashionMnistDir,
                                            const std::string& split = "train");

}  // namespace hd::data
