// Reader for PyTorch's own files, without LibTorch's unpickler (which trusts what it reads):
//   * torch.save zip archives (PyTorch >= 1.6): PREFIX/data.pkl (the object), PREFIX/data/KEY
//     (raw storages), PREFIX/byteorder ("little" or "big"; little when absent);
//   * torch.jit.save archives (TorchScript, e.g. OpenAI's CLIP .pt files): the same layout plus
//     PREFIX/code/ and PREFIX/constants.pkl; PREFIX/data.pkl holds the module objects, whose
//     parameters are read, never the code;
//   * legacy torch.save files (PyTorch < 1.6): five pickles in a row (magic number, protocol
//     version, system info, the object, the storage keys), then each storage as an 8-byte element
//     count and its little-endian bytes.
// The pickles go through the restricted unpickler (io/pickle.h). The zip structure, every entry
// and every storage are checked against the file before they are used; tensors are built here
// from the stored bytes (a storage read once and shared by the tensors that view it).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>

#include "io/pickle.h"

namespace hd::io {

class TorchFile {
 public:
  // Reads and checks the container and unpickles the object; storages are read on demand.
  // hd::Error naming `path` for anything but one of the three formats above.
  static TorchFile open(const std::string& path);

  const std::string& path() const;
  // "torch" (zip archive), "torchscript" (torch.jit.save archive) or "torch_legacy".
  const std::string& format() const;
  // What the object pickle holds.
  const pickle::Value& root() const;
  // Every value of the object pickle (root() among them).
  const pickle::Document& document() const;

  // The CPU tensor of a Tensor value of root(): its dtype, sizes and strides as saved.
  at::Tensor tensor(const pickle::Value& v) const;

  // The tensors in `v` by name: the string-keyed tensor entries of a dict, or, for a TorchScript
  // module object, its parameters and buffers and those of its submodules under dotted names
  // ("visual.conv1.weight"); each tensor contiguous. Entries of a dict that are not tensors are appended to `skipped`
  // (as "name (type)"); a module's other attributes are not.
  std::vector<std::pair<std::string, at::Tensor>> tensors_in(const pickle::Value& v,
                                                             std::vector<std::string>* skipped = nullptr) const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// True for a TorchScript module object (a value of class `__torch__.*` with a dict state).
bool is_script_module(const pickle::Value& v);

}  // namespace hd::io
