// Reader and writer for the safetensors format (https://github.com/huggingface/safetensors),
// the single checkpoint file format of this project.
//
// Layout of a file:
//   bytes [0, 8)        N, the header length, little-endian uint64
//   bytes [8, 8+N)      UTF-8 JSON object:
//                         {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]},
//                          ..., "__metadata__": {"key": "value", ...}}
//   bytes [8+N, EOF)    data buffer; [BEGIN, END) are relative to its start, values little-endian
//
// The reader treats every file as untrusted (checkpoints are downloaded from the internet):
// SafeTensorsFile::open() reads and fully validates the header without ever allocating more
// than a small multiple of the (capped) header size, and every problem is reported as an
// hd::Error whose message starts with the file path. Tensor data is read lazily with pread()
// straight into freshly allocated tensors, so multi-GiB files are never held in memory twice.
//
// Deliberate differences from the reference implementation (documented in safetensors.cpp):
//   * gaps between tensors and trailing bytes after the last tensor are accepted (the reference
//     refuses them); overlapping tensors are refused like in the reference;
//   * unknown fields inside a tensor entry are ignored (like the reference), but nesting inside
//     them is limited;
//   * tensors with more than kMaxRank dimensions and __metadata__ with more than 65536 entries
//     are refused (keeps memory bounded: parsing needs at most a few times the header size);
//   * BOOL tensors whose bytes are not 0/1 are refused on load.
//
// Only little-endian hosts are supported (checked at compile time).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>  // at::Tensor, the same type as torch::Tensor
#include <c10/core/ScalarType.h>

namespace hd::io {

// Largest header the reader accepts; checked before the header is allocated.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // 100 MiB
// Largest tensor rank the reader accepts (bounds memory per shape; no real model comes close).
constexpr size_t kMaxRank = 64;

struct TensorInfo {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data section, [begin, end)
};

class SafeTensorsFile {
 public:
  // Opens `path`, reads and validates the header (not the tensor data). The file stays open, so
  // later load() calls read from the same file even if `path` is atomically replaced meanwhile.
  static SafeTensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // All tensors, sorted by data offset (ties, i.e. empty tensors, keep the header order).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The "__metadata__" object (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  // hd::Error naming file and tensor if absent.
  const TensorInfo& info(const std::string& name) const;
  // A new contiguous CPU tensor with the stored dtype and shape. Thread-safe.
  at::Tensor load(const std::string& name) const;
  // All tensors in tensors() order.
  std::vector<std::pair<std::string, at::Tensor>> load_all() const;
  uint64_t file_size() const { return file_size_; }
  // Absolute file offset where the data buffer starts (8 + header length).
  uint64_t data_start() const { return data_start_; }

 private:
  SafeTensorsFile() = default;
  at::Tensor load(const TensorInfo& info) const;

  std::string path_;
  std::shared_ptr<const int> fd_;  // closed when the last copy goes away
  uint64_t file_size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (in the given order, each made contiguous and copied to the CPU one at a
// time) and `metadata` to `path` atomically via hd::atomic_write_file: on any error the old
// file is untouched and hd::Error names `path`. Dtypes are kept as they are; unsupported dtypes,
// undefined/non-strided tensors and duplicate names are refused before anything is written.
// Output is byte-for-byte deterministic: compact JSON, "__metadata__" first (only if
// non-empty), then the tensors as {"dtype","shape","data_offsets"}; padded with spaces so the
// data buffer starts at an 8-byte aligned file offset.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// "F32", "F16", ...; hd::Error for dtypes the format/this project does not support.
std::string dtype_name(c10::ScalarType t);
// Inverse of dtype_name; hd::Error on unknown or unsupported names.
c10::ScalarType parse_dtype(const std::string& s);
// Bytes per element of a safetensors dtype name; hd::Error on unknown names.
size_t dtype_size(const std::string& s);

}  // namespace hd::io
