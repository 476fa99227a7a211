// A restricted unpickler for the pickles inside torch.save and torch.jit.save files, in the spirit
// of PyTorch's torch.load(weights_only=True): it builds values, it never calls anything.
//
// Read: pickle protocols 2-5 (and the few protocol-0/1 opcodes they still emit: MARK, TUPLE,
// DICT, LIST, ...); None, bool, int, float, str, bytes, tuple, list, dict, set; the globals a
// state dict needs: collections.OrderedDict, torch._utils._rebuild_tensor(_v2),
// torch._utils._rebuild_parameter(_with_state), torch.Size, the typed storage classes
// (torch.FloatStorage, torch.cuda.HalfStorage, ...) and torch.storage.UntypedStorage; persistent
// ids ('storage', TYPE, KEY, LOCATION, NUMEL[, VIEW]) as torch.save and torch.jit.save write them.
// Anything else that is a class or function (argparse.Namespace, numpy scalars, an optimizer's
// classes, TorchScript modules `__torch__.*`) becomes an Object value that records its qualified
// name, its arguments and its BUILD state, and is never executed: the reader of the result
// decides what to do with it (TorchScript modules are flattened into parameter names, the rest
// is reported as skipped).
//
// The input is untrusted. Every length is checked against the bytes left before anything is
// allocated; memo indices, the value count, the stack and the nesting of values are bounded; a
// tensor's view (offset, sizes, strides) is checked against its storage's element count. Errors
// are hd::Error "ORIGIN: byte N: what (opcode 0xNN / global 'module.name')".
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace hd::io::pickle {

// Limits: far above what a state dict of any published model needs (ViT-g's data.pkl holds
// ~10^4 values), low enough that a hostile pickle cannot exhaust memory or the C++ stack.
constexpr size_t kMaxValues = size_t{1} << 24;
constexpr size_t kMaxDepth = 100;  // nesting of containers within containers
constexpr size_t kMaxRank = 64;    // tensor dimensions

// A storage named by a persistent id: the archive entry `data/KEY` (zip) or the storage KEY of a
// legacy file, read as `numel` elements of `dtype`. Legacy files may name a view of it:
// elements [offset, offset + numel) of the storage of `root_numel` elements.
struct StorageRef {
  std::string key;
  c10::ScalarType dtype = c10::ScalarType::Float;
  int64_t numel = 0;
  std::string location;  // "cpu", "cuda:0", ...: where it lived when saved (the bytes are the same)
  int64_t view_offset = 0;
};

// torch._utils._rebuild_tensor_v2(storage, offset, sizes, strides, ...): elements of the storage.
struct TensorRef {
  StorageRef storage;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
};

enum class Kind { None, Bool, Int, BigInt, Float, Str, Bytes, Tuple, List, Dict, Set, Global, Object, Tensor, Storage };

// One value of the pickle. Values live in the Document that made them; containers hold pointers
// to other values of the same Document (a hostile pickle can make them cyclic: walk with a depth
// bound).
struct Value {
  Kind kind = Kind::None;
  uint64_t at = 0;        // byte offset of the opcode that made the value (for messages)
  bool b = false;         // Bool
  int64_t i = 0;          // Int
  double f = 0;           // Float
  std::string s;          // Str, Bytes, BigInt (two's-complement little-endian bytes);
                          // Global, Object: the qualified name "module.name"
  std::vector<Value*> items;                       // Tuple, List, Set; Object: its arguments
  std::vector<std::pair<Value*, Value*>> entries;  // Dict (in insertion order)
  Value* state = nullptr;                          // Object, Dict: BUILD's argument (if any)
  bool ordered = false;                            // Dict: a collections.OrderedDict
  TensorRef tensor;                                // Tensor (also Storage: tensor.storage)

  bool is_str() const { return kind == Kind::Str; }
  // The dict's value for the string key `k`, or nullptr.
  const Value* get(const std::string& k) const;
  // "dict", "collections.OrderedDict", "tensor", "argparse.Namespace", "int", ...
  std::string type_name() const;
};

// The values made from one pickle; root() is what STOP returned.
class Document {
 public:
  const Value& root() const { return *root_; }
  // Bytes of the pickle read up to and including STOP.
  uint64_t consumed() const { return consumed_; }
  // Every value made, in order (a walk over them needs no recursion).
  const std::vector<std::unique_ptr<Value>>& values() const { return values_; }

 private:
  friend class Unpickler;
  std::vector<std::unique_ptr<Value>> values_;
  Value* root_ = nullptr;
  uint64_t consumed_ = 0;
};

// Unpickles the pickle at the start of [data, data + size) (it may be followed by other bytes:
// legacy torch.save files are several pickles in a row). `origin` starts every error message,
// e.g. "model.pth: archive/data.pkl".
Document parse(const char* data, uint64_t size, const std::string& origin);

// The dtype of a storage class ("FloatStorage", "HalfStorage", ...), false if unknown.
bool storage_dtype(const std::string& class_name, c10::ScalarType* dtype);

}  // namespace hd::io::pickle
