#include "model/interop.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include "io/safetensors.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace hd::model {

namespace fs = std::filesystem;
namespace F = torch::nn::functional;

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Error(path + ": cannot open file");
  const auto size = static_cast<std::streamoff>(f.tellg());
  std::vector<char> bytes(static_cast<size_t>(size));
  f.seekg(0);
  if (size > 0 && !f.read(bytes.data(), size)) throw Error(path + ": read error");
  return bytes;
}

bool contains_bytes(const std::vector<char>& hay, const char* needle) {
  const size_t n = std::strlen(needle);
  return std::search(hay.begin(), hay.end(), needle, needle + n) != hay.end();
}

// The unsigned little-endian integer of `bytes` bytes at `p` (zip fields, pickle arguments).
uint64_t little_endian(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

// Walks the opcodes of a pickle (protocols 0-5) and checks that every length-prefixed argument
// fits in what is left of it: LibTorch's unpickler allocates what a length claims before reading
// (a 4-byte length of 0xffffffff made it reserve 4 GiB), and sizes its memo by the largest index
// a PUT names: memo indices must stay below the pickle's length (every PUT takes at least two
// bytes). Throws `bad(...)` on a violation.
template <typename Bad>
void check_pickle_lengths(const char* p, uint64_t n, const Bad& bad) {
  uint64_t at = 0;
  auto need = [&](uint64_t k, const char* what) {
    if (k > n - at) throw bad(std::string("data.pkl: ") + what + " runs past the end of the pickle");
  };
  auto le = [&](int bytes) {
    need(static_cast<uint64_t>(bytes), "an argument");
    const uint64_t v = little_endian(p + at, bytes);
    at += static_cast<uint64_t>(bytes);
    return v;
  };
  auto line = [&] {
    const void* nl = std::memchr(p + at, '\n', n - at);
    if (!nl) throw bad("data.pkl: unterminated text argument");
    const uint64_t start = at;
    at = static_cast<uint64_t>(static_cast<const char*>(nl) - p) + 1;
    return std::string(p + start, p + at - 1);
  };
  auto memo = [&](uint64_t index) {
    if (index >= n) throw bad("data.pkl: memo index " + std::to_string(index) + " beyond the pickle's size");
  };
  auto blob = [&](uint64_t len) {
    if (len > n - at)
      throw bad("data.pkl: an argument claims " + std::to_string(len) + " bytes where " + std::to_string(n - at) +
                " remain");
    at += len;
  };
  while (true) {
    need(1, "an opcode");
    const auto op = static_cast<uint8_t>(p[at++]);
    switch (op) {
      case '.': return;  // STOP
      case '(': case ')': case '0': case '1': case '2': case 'N': case 'R': case 'a': case 'b': case 'd': case '}':
      case 'e': case 'l': case ']': case 'o': case 's': case 't': case 'u': case 'Q': case 0x81: case 0x85:
      case 0x86: case 0x87: case 0x88: case 0x89: case 0x8f: case 0x90: case 0x91: case 0x92: case 0x93:
      case 0x94: case 0x97: case 0x98: break;
      case 'K': case 'q': case 'h': case 0x80: case 0x82: le(1); break;
      case 'M': case 0x83: le(2); break;
      case 'J': case 0x84: le(4); break;
      case 'r': case 'j': memo(le(4)); break;
      case 'G': le(8); break;
      case 0x95: {  // FRAME: the length of the opcodes that follow
        const uint64_t len = le(8);
        if (len > n - at) throw bad("data.pkl: a frame claims " + std::to_string(len) + " bytes where " +
                                    std::to_string(n - at) + " remain");
        break;
      }
      case 'p': case 'g': {
        const std::string t = line();
        memo(t.empty() || t.find_first_not_of("0123456789") != std::string::npos || t.size() > 18 ? n
                                                                                                 : std::stoull(t));
        break;
      }
      case 'I': case 'L': case 'F': case 'S': case 'V': case 'P': line(); break;
      case 'c': case 'i': line(); line(); break;
      case 'U': case 'C': case 0x8c: case 0x8a: blob(le(1)); break;
      case 'T': case 'B': case 'X': case 0x8b: blob(le(4)); break;
      case 0x8d: case 0x8e: case 0x96: blob(le(8)); break;
      default: throw bad("data.pkl: unknown pickle opcode " + std::to_string(op));
    }
  }
}

// Checks the zip structure of a torch.save archive before LibTorch's reader sees it: LibTorch
// 1.13's in-memory reader trusts the archive's lengths and offsets (a fuzzed file made it read
// past its buffer) and allocates what an entry's header claims. torch.save writes "stored"
// (uncompressed) entries, zip64 records when needed; so every entry must be stored, lie inside
// the file before the central directory, and every length must fit where it is read from.
void validate_torch_zip(const std::vector<char>& bytes, const std::string& path) {
  const uint64_t size = bytes.size();
  auto bad = [&](const std::string& what) -> Error {
    return Error(path + ": not a valid torch.save zip archive: " + what);
  };
  auto field = [&](uint64_t at, int n) -> uint64_t {
    if (at > size || static_cast<uint64_t>(n) > size - at) throw bad("truncated");
    return little_endian(bytes.data() + at, n);
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
  // zip64: a locator right before the record points to the zip64 end-of-central-directory,
  // whose counts then apply (as LibTorch's reader takes them whenever the locator is there).
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
  uint64_t at = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t e = 0; e < entries; ++e) {
    if (at + 46 > cd_end || u32(at) != 0x02014b50) throw bad("central directory entry " + std::to_string(e) + " is malformed");
    const uint64_t method = u16(at + 10), flags = u16(at + 8);
    uint64_t csize = u32(at + 20), usize = u32(at + 24), local = u32(at + 42);
    const uint64_t name_len = u16(at + 28), extra_len = u16(at + 30), comment_len = u16(at + 32);
    const uint64_t next = at + 46 + name_len + extra_len + comment_len;
    if (next > cd_end) throw bad("central directory entry " + std::to_string(e) + " overruns the directory");
    const std::string name(bytes.data() + at + 46, bytes.data() + at + 46 + name_len);
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
    if (method != 0 || csize != usize)
      throw bad("entry '" + name + "' is compressed (torch.save writes stored entries)");
    if (flags & 1) throw bad("entry '" + name + "' is encrypted");
    if (local > cd_offset || cd_offset - local < 30 || u32(local) != 0x04034b50)
      throw bad("entry '" + name + "': local header out of place");
    const uint64_t data = local + 30 + u16(local + 26) + u16(local + 28);
    if (data > cd_offset || usize > cd_offset - data) throw bad("entry '" + name + "' extends past its data area");
    if (name.size() >= 9 && name.compare(name.size() - 9, 9, "/data.pkl") == 0)
      check_pickle_lengths(bytes.data() + data, usize, bad);
    at = next;
  }
}

// The archive's bytes for LibTorch's zip reader, every read clamped to them (LibTorch 1.13's own
// in-memory adapter copies whatever range it is asked for).
class ClampedReader : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit ClampedReader(const std::vector<char>& bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<size_t>(n, bytes_.size() - static_cast<size_t>(pos));
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  const std::vector<char>& bytes_;
};

// torch.save's zip archive (validated) unpickled as torch.load does, tensors on the CPU.
c10::IValue load_torch_zip(const std::vector<char>& bytes) {
  caffe2::serialize::PyTorchStreamReader reader(std::make_shared<ClampedReader>(bytes));
  return torch::jit::readArchiveAndTensors("data", /*pickle_prefix=*/"", /*tensor_prefix=*/"",
                                           /*type_resolver=*/c10::nullopt, /*obj_loader=*/c10::nullopt,
                                           /*device=*/c10::Device(c10::kCPU), reader);
}

// The Python one-liner that turns the file into something LibTorch reads: a plain dict.
std::string pth_fix(const std::string& path, const std::string& entry) {
  std::string load = "torch.load('" + path + "', map_location='cpu')" + (entry.empty() ? "" : "['" + entry + "']");
  return "convert it once in Python: python3 -c \"import torch; torch.save(dict(" + load + "), '" + path +
         ".dict.pth')\" (a plain dict), or save it as safetensors (safetensors.torch.save_file)";
}

// Where a collections.OrderedDict sits in a torch.save file: "" at the top level, else the
// wrapper entry holding it (found in the pickle: protocol 2 writes a key as 'X', a 4-byte
// little-endian length and the UTF-8 text, before the value's class).
std::string ordered_dict_entry(const std::vector<char>& bytes) {
  static const std::string od = "collections\nOrderedDict";
  auto at = std::search(bytes.begin(), bytes.end(), od.begin(), od.end());
  for (const auto& w : wrapper_keys()) {
    std::string key = "X";
    for (int i = 0; i < 4; ++i) key += static_cast<char>((w.size() >> (8 * i)) & 0xff);
    key += w;
    if (std::search(bytes.begin(), at, key.begin(), key.end()) != at) return w;
  }
  return "";
}

std::string first_line(const std::string& s) {
  auto n = s.find('\n');
  return n == std::string::npos ? s : s.substr(0, n);
}

NamedTensors tensors_of(const c10::impl::GenericDict& d) {
  NamedTensors out;
  for (const auto& kv : d)
    if (kv.key().isString() && kv.value().isTensor())
      out.emplace_back(kv.key().toStringRef(), kv.value().toTensor().contiguous());
  return out;
}

CheckpointFile read_torch_file(const std::string& path) {
  CheckpointFile out;
  out.format = "torch";
  const auto bytes = read_bytes(path);
  validate_torch_zip(bytes, path);
  const bool ordered = contains_bytes(bytes, "collections\nOrderedDict");
  c10::IValue root;
  try {
    root = load_torch_zip(bytes);
  } catch (const std::exception& e) {
    if (ordered) {
      const std::string entry = ordered_dict_entry(bytes);
      throw Error(path + ": the file holds a collections.OrderedDict" +
                  (entry.empty() ? " (as torch.save(model.state_dict()) writes)" : " (its '" + entry + "' entry)") +
                  ", which LibTorch cannot rebuild; " + pth_fix(path, entry));
    }
    throw Error(path + ": LibTorch cannot read this torch.save file (" + first_line(e.what()) + "); " +
                pth_fix(path, ""));
  }
  if (!root.isGenericDict()) {
    if (ordered || root.isNone())
      throw Error(path + ": the file holds a collections.OrderedDict (as torch.save(model.state_dict()) writes), "
                         "which LibTorch cannot rebuild; " + pth_fix(path, ""));
    throw Error(path + ": expected a dict of tensors, found a " + root.tagKind());
  }
  const auto dict = root.toGenericDict();
  out.tensors = tensors_of(dict);
  if (!out.tensors.empty()) return out;
  std::string keys;
  for (const auto& kv : dict)
    if (kv.key().isString()) keys += (keys.empty() ? "" : ", ") + kv.key().toStringRef();
  for (const auto& w : wrapper_keys()) {
    auto it = dict.find(w);
    if (it == dict.end()) continue;
    const auto& v = it->value();
    if (v.isGenericDict()) {
      out.tensors = tensors_of(v.toGenericDict());
      // One more level: {"state_dict": {"model": {...}}} and the like.
      if (out.tensors.empty())
        for (const auto& w2 : wrapper_keys()) {
          auto in = v.toGenericDict();
          auto it2 = in.find(w2);
          if (it2 != in.end() && it2->value().isGenericDict()) {
            out.tensors = tensors_of(it2->value().toGenericDict());
            if (!out.tensors.empty()) {
              out.notes.push_back("using the '" + w + "' / '" + w2 + "' entry of the file");
              return out;
            }
          }
        }
      if (!out.tensors.empty()) {
        out.notes.push_back("using the '" + w + "' entry of the file");
        return out;
      }
    } else if (v.isNone() && ordered) {
      throw Error(path + ": the '" + w + "' entry is a collections.OrderedDict, which LibTorch cannot rebuild; " +
                  pth_fix(path, w));
    }
  }
  throw Error(path + ": no tensors found at the top level or under " + [] {
    std::string s;
    for (const auto& w : wrapper_keys()) s += (s.empty() ? "'" : ", '") + w + "'";
    return s;
  }() + " (top-level keys: " + (keys.empty() ? "none" : keys) + ")");
}

// Whether the tensors hold a ViT's patch embedding (possibly under further prefixes).
bool has_patch_embedding(const NamedTensors& t) {
  for (const auto& [k, v] : t)
    for (const char* pe : {"patch_embed.proj.weight", "conv1.weight", "conv_proj.weight"}) {
      const std::string e(pe);
      if (k == e || (k.size() > e.size() && k.compare(k.size() - e.size() - 1, e.size() + 1, "." + e) == 0))
        return true;
    }
  return false;
}

torch::Tensor apply_op(const torch::Tensor& t, TensorOp op, const std::string& key, const std::string& origin) {
  switch (op) {
    case TensorOp::None:
      return t;
    case TensorOp::Transpose:
      if (t.dim() != 2)
        throw Error(origin + ": tensor '" + key + "' has shape " + shape_str(t.sizes()) +
                    " but a 2-D projection matrix [in, out] is expected");
      return t.t().contiguous();
    case TensorOp::AsTokens:
      if (t.dim() == 1) return t.reshape({1, 1, t.size(0)});
      if (t.dim() == 2) return t.unsqueeze(0);
      if (t.dim() == 3 && t.size(0) == 1) return t;
      throw Error(origin + ": tensor '" + key + "' has shape " + shape_str(t.sizes()) +
                  " but [D] or [N, D] token embeddings are expected");
  }
  return t;
}

bool near(double a, double b) { return std::abs(a - b) <= 1e-3 * std::abs(b); }

std::string tail_of(const std::string& name) {
  auto dot = name.find('.');
  return dot == std::string::npos ? "" : name.substr(dot + 1);
}
std::string base_of(const std::string& name) { return name.substr(0, name.find('.')); }

}  // namespace

// ---------------------------------------------------------------------------------------------
const std::vector<std::string>& wrapper_keys() {
  static const std::vector<std::string> k = {"state_dict", "model", "module", "teacher", "model_ema", "net"};
  return k;
}

const std::vector<std::string>& key_prefixes() {
  static const std::vector<std::string> p = {"module.", "_orig_mod.", "model.", "visual.", "trunk.",
                                             "backbone.", "teacher.", "image_encoder."};
  return p;
}

const std::vector<KeyLayout>& key_layouts() {
  static const std::vector<KeyLayout> layouts = {
      {"openai_clip",
       {R"(class_embedding)", R"(transformer\.resblocks\.\d+\..*)"},
       {
           {R"(conv1\.weight)", "patch_embed.proj.weight"},
           {R"(class_embedding)", "cls_token", TensorOp::AsTokens},
           {R"(positional_embedding)", "pos_embed", TensorOp::AsTokens},
           {R"(ln_pre\.(weight|bias))", "norm_pre.$1"},
           {R"(transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias))", "blocks.$1.norm1.$2"},
           {R"(transformer\.resblocks\.(\d+)\.attn\.in_proj_weight)", "blocks.$1.attn.qkv.weight"},
           {R"(transformer\.resblocks\.(\d+)\.attn\.in_proj_bias)", "blocks.$1.attn.qkv.bias"},
           {R"(transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias))", "blocks.$1.attn.proj.$2"},
           {R"(transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias))", "blocks.$1.norm2.$2"},
           {R"(transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias))", "blocks.$1.mlp.fc1.$2"},
           {R"(transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias))", "blocks.$1.mlp.fc2.$2"},
           {R"(ln_post\.(weight|bias))", "norm.$1"},
           {R"(proj)", "head.weight", TensorOp::Transpose},
       },
       {}},
      {"torchvision",
       {R"(class_token)", R"(conv_proj\.weight)", R"(encoder\.layers\.encoder_layer_\d+\..*)"},
       {
           {R"(conv_proj\.(weight|bias))", "patch_embed.proj.$1"},
           {R"(class_token)", "cls_token"},
           {R"(encoder\.pos_embedding)", "pos_embed"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.ln_1\.(weight|bias))", "blocks.$1.norm1.$2"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_weight)", "blocks.$1.attn.qkv.weight"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_bias)", "blocks.$1.attn.qkv.bias"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.(weight|bias))",
            "blocks.$1.attn.proj.$2"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.ln_2\.(weight|bias))", "blocks.$1.norm2.$2"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.(weight|bias))", "blocks.$1.mlp.fc1.$2"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.(weight|bias))", "blocks.$1.mlp.fc2.$2"},
           {R"(encoder\.ln\.(weight|bias))", "norm.$1"},
           {R"(heads\.head\.(weight|bias))", "head.$1"},
       },
       {}},
      // timm's own names (MAE, DeiT, DINO and timm / Hugging Face hub files): kept; MAE
      // pre-training files also hold the decoder and mask token.
      {"timm", {}, {}, {R"(decoder[._].*)", R"(mask_token)"}},
  };
  return layouts;
}

// ---------------------------------------------------------------------------------------------
std::string checkpoint_format(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open file");
  unsigned char b[9] = {0};
  f.read(reinterpret_cast<char*>(b), sizeof b);
  const auto n = f.gcount();
  if (n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4) return "torch";
  // A safetensors header (after its 8-byte length) is a JSON object; a pickle starts with PROTO.
  if (n == 9 && b[8] == '{') return "safetensors";
  if (n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5) return "torch_legacy";
  return "safetensors";
}

CheckpointFile read_checkpoint_file(const std::string& path) {
  const std::string format = checkpoint_format(path);
  if (format == "torch") return read_torch_file(path);
  if (format == "torch_legacy")
    throw Error(path + ": a torch.save file in the legacy (pre-1.6, non-zip) format, which LibTorch cannot read; " +
                pth_fix(path, ""));
  CheckpointFile out;
  out.format = "safetensors";
  auto file = io::SafeTensorsFile::open(path);
  out.tensors = file.load_all();
  out.metadata = file.metadata();
  return out;
}

Conversion to_timm_layout(NamedTensors tensors, const std::string& origin) {
  Conversion c;
  for (bool changed = true; changed;) {
    changed = false;
    for (const auto& p : key_prefixes()) {
      NamedTensors inside;
      std::vector<std::string> outside;
      for (auto& [k, v] : tensors) {
        if (starts_with(k, p)) inside.emplace_back(k.substr(p.size()), v);
        else outside.push_back(k);
      }
      if (inside.empty() || !has_patch_embedding(inside)) continue;
      c.notes.push_back("stripped the key prefix '" + p + "'" +
                        (outside.empty() ? "" : " (ignoring " + std::to_string(outside.size()) + " tensors outside it)"));
      c.ignored.insert(c.ignored.end(), outside.begin(), outside.end());
      tensors = std::move(inside);
      changed = true;
      break;
    }
  }

  static const std::regex hf_transformers(R"((^|.*\.)(embeddings\.patch_embeddings\..*|encoder\.layers?\.\d+\.(attention|self_attn)\..*))");
  for (const auto& [k, v] : tensors)
    if (std::regex_match(k, hf_transformers))
      throw Error(origin + ": tensor '" + k + "' is in Hugging Face transformers' layout (separate query/key/value "
                  "projections), which is not read; use the timm weights of the same model (hf.co/timm/...)");

  const KeyLayout* layout = &key_layouts().back();
  for (const auto& l : key_layouts()) {
    bool hit = false;
    for (const auto& m : l.markers) {
      std::regex re(m);
      for (const auto& [k, v] : tensors)
        if (std::regex_match(k, re)) {
          hit = true;
          break;
        }
      if (hit) break;
    }
    if (hit) {
      layout = &l;
      break;
    }
  }
  c.layout = layout->name;

  std::vector<std::pair<std::regex, const RenameRule*>> rules;
  for (const auto& r : layout->rules) rules.emplace_back(std::regex(r.pattern), &r);
  std::vector<std::regex> ignore;
  for (const auto& i : layout->ignore) ignore.emplace_back(i);

  std::map<std::string, std::string> source_of;
  int renamed = 0, dropped = 0;
  for (auto& [k, v] : tensors) {
    bool skip = false;
    for (const auto& re : ignore)
      if (std::regex_match(k, re)) skip = true;
    if (skip) {
      c.ignored.push_back(k);
      ++dropped;
      continue;
    }
    std::string name = k;
    torch::Tensor t = v;
    for (const auto& [re, rule] : rules)
      if (std::regex_match(k, re)) {
        name = std::regex_replace(k, re, rule->replacement);
        t = apply_op(v, rule->op, k, origin);
        ++renamed;
        break;
      }
    auto [it, fresh] = source_of.emplace(name, k);
    if (!fresh)
      throw Error(origin + ": tensors '" + it->second + "' and '" + k + "' both map to '" + name + "'");
    c.tensors.emplace_back(name, t);
  }
  if (renamed) c.notes.push_back("converted " + std::to_string(renamed) + " tensor names from the " + c.layout + " layout");
  if (dropped) c.notes.push_back("ignored " + std::to_string(dropped) + " tensors that are not part of the ViT encoder");
  return c;
}

torch::Tensor resample_pos_embed(const torch::Tensor& pos, int64_t new_h, int64_t new_w, int64_t num_prefix,
                                 bool antialias) {
  if (pos.dim() != 3 || pos.size(0) != 1)
    throw Error("pos_embed has shape " + shape_str(pos.sizes()) + "; expected [1, tokens, dim]");
  const int64_t grid_tokens = pos.size(1) - num_prefix, D = pos.size(2);
  const auto hw = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(grid_tokens, 0)))));
  if (grid_tokens <= 0 || hw * hw != grid_tokens)
    throw Error("pos_embed has shape " + shape_str(pos.sizes()) + ": " + std::to_string(grid_tokens) +
                " grid tokens after " + std::to_string(num_prefix) + " prefix token(s) is not a square grid");
  if (new_h <= 0 || new_w <= 0) throw Error("pos_embed: the new grid must be positive");
  if (hw == new_h && hw == new_w) return pos;
  torch::NoGradGuard ng;
  auto prefix = pos.slice(1, 0, num_prefix);
  auto grid = pos.slice(1, num_prefix).to(torch::kFloat).reshape({1, hw, hw, D}).permute({0, 3, 1, 2});
  grid = F::interpolate(grid, F::InterpolateFuncOptions()
                                  .size(std::vector<int64_t>{new_h, new_w})
                                  .mode(torch::kBicubic)
                                  .align_corners(false)
                                  .antialias(antialias));
  grid = grid.permute({0, 2, 3, 1}).reshape({1, new_h * new_w, D}).to(pos.scalar_type());
  return torch::cat({prefix, grid}, 1).contiguous();
}

void fit_to_config(Conversion& c, ViTConfig& cfg, const std::string& origin) {
  auto find = [&](const std::string& name) -> torch::Tensor* {
    for (auto& [k, v] : c.tensors)
      if (k == name) return &v;
    return nullptr;
  };
  if (auto* pos = find("pos_embed")) {
    const int64_t prefix = cfg.num_prefix_tokens();
    if (pos->dim() == 3 && pos->size(0) == 1 && pos->size(2) == cfg.embed_dim && pos->size(1) != cfg.num_tokens()) {
      const int64_t n = pos->size(1) - prefix;
      const auto g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(n, 0)))));
      if (n > 0 && g * g == n) {
        *pos = resample_pos_embed(*pos, cfg.grid_size(), cfg.grid_size(), prefix);
        c.notes.push_back("resampled pos_embed from a " + std::to_string(g) + "x" + std::to_string(g) + " to a " +
                          std::to_string(cfg.grid_size()) + "x" + std::to_string(cfg.grid_size()) +
                          " grid (bicubic, as timm)");
      }
    }
  }
  auto* hw = find("head.weight");
  const bool hb = find("head.bias") != nullptr;
  if (hw) {
    if (hw->dim() == 2 && hw->size(1) == cfg.embed_dim && (hw->size(0) != cfg.num_classes || hb != cfg.head_bias)) {
      c.notes.push_back("the classifier follows the file: " + std::to_string(hw->size(0)) + " outputs" +
                        (hb ? "" : ", no bias") + " (the architecture says " + std::to_string(cfg.num_classes) + ")");
      cfg.num_classes = hw->size(0);
      cfg.head_bias = hb;
    }
  } else if (cfg.num_classes > 0 && !hb) {
    c.notes.push_back("the file has no classifier: features only");
    cfg.num_classes = 0;
  }
  (void)origin;
}

// ---------------------------------------------------------------------------------------------
std::string timm_hub_config(const ViTConfig& c) {
  c.validate();
  const bool clip_norm = near(c.ln_eps, 1e-5), vit_norm = near(c.ln_eps, 1e-6);
  if (!clip_norm && !vit_norm) {
    std::ostringstream e;
    e << "model '" << c.name << "' has LayerNorm eps " << c.ln_eps
      << "; timm's VisionTransformer has 1e-6 (1e-5 in its CLIP variants) and no option for others";
    throw Error(e.str());
  }
  if (c.patch_bias == c.norm_pre)
    throw Error("model '" + c.name + "' has " + (c.patch_bias ? "a" : "no") + " patch-embedding bias with" +
                (c.norm_pre ? "" : "out") + " norm_pre; timm's VisionTransformer ties them (bias = not pre_norm)");
  static const std::set<std::string> timm_vit = {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
                                                 "vit_large_patch16_224", "deit_base_patch16_224"};
  static const std::set<std::string> timm_clip = {"vit_base_patch16_clip_224", "vit_large_patch14_clip_224"};
  std::string arch = base_of(c.name), tag = tail_of(c.name);
  if (!(clip_norm ? timm_clip : timm_vit).count(arch)) {
    // Every architectural detail is in model_args; the base only brings the LayerNorm eps.
    arch = clip_norm ? "vit_base_patch16_clip_224" : "vit_base_patch16_224";
    tag = "hybrid_distill";
  }
  using oj = nlohmann::ordered_json;
  oj args = {{"img_size", c.img_size},
             {"patch_size", c.patch_size},
             {"in_chans", c.in_chans},
             {"embed_dim", c.embed_dim},
             {"depth", c.depth},
             {"num_heads", c.num_heads},
             {"mlp_ratio", c.mlp_ratio},
             {"qkv_bias", c.qkv_bias},
             {"class_token", c.class_token},
             {"global_pool", c.pool == Pooling::Token ? "token" : "avg"},
             {"fc_norm", c.fc_norm},
             {"pre_norm", c.norm_pre},
             {"act_layer", c.act == Activation::GELU ? "gelu" : "quick_gelu"}};
  oj pretrained = {{"tag", tag},
                   {"custom_load", false},
                   {"input_size", {c.in_chans, c.img_size, c.img_size}},
                   {"fixed_input_size", true},
                   // This project's evaluation transform: bilinear resize of the shorter side to
                   // size / 0.875, then a center crop.
                   {"interpolation", "bilinear"},
                   {"crop_pct", 0.875},
                   {"crop_mode", "center"},
                   {"mean", c.mean},
                   {"std", c.std},
                   {"num_classes", c.num_classes},
                   {"pool_size", nullptr},
                   {"first_conv", "patch_embed.proj"},
                   {"classifier", "head"}};
  oj j = {{"architecture", arch},
          {"num_classes", c.num_classes},
          {"num_features", c.embed_dim},
          {"global_pool", c.pool == Pooling::Token ? "token" : "avg"},
          {"model_args", args},
          {"pretrained_cfg", pretrained}};
  return j.dump(2) + "\n";
}

ViTConfig config_from_timm_hub(const std::string& text, const std::string& origin) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw Error(origin + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("architecture") || !j["architecture"].is_string())
    throw Error(origin + ": not a timm config (no \"architecture\")");
  const std::string arch = j["architecture"].get<std::string>();
  const json pre = j.value("pretrained_cfg", json::object());
  const json args = j.value("model_args", json::object());
  const std::string tag = pre.is_object() ? pre.value("tag", std::string()) : "";
  ViTConfig c;
  const auto names = preset_names();
  auto known = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  if (!tag.empty() && known(arch + "." + tag)) c = preset(arch + "." + tag);
  else if (known(arch)) c = preset(arch);
  else if (arch.find("_clip_") != std::string::npos) c = preset("vit_base_patch16_clip_224.openai");
  c.name = tag.empty() ? arch : arch + "." + tag;
  try {
    bool fc_norm_given = false;
    for (auto it = args.begin(); it != args.end(); ++it) {
      const std::string& k = it.key();
      const json& v = it.value();
      if (k == "img_size") {
        if (v.is_array()) {
          if (v.size() != 2 || v[0] != v[1]) throw Error("model_args.img_size must be square");
          c.img_size = v[0].get<int64_t>();
        } else {
          c.img_size = v.get<int64_t>();
        }
      } else if (k == "patch_size") c.patch_size = v.get<int64_t>();
      else if (k == "in_chans") c.in_chans = v.get<int64_t>();
      else if (k == "embed_dim") c.embed_dim = v.get<int64_t>();
      else if (k == "depth") c.depth = v.get<int64_t>();
      else if (k == "num_heads") c.num_heads = v.get<int64_t>();
      else if (k == "mlp_ratio") c.mlp_ratio = v.get<double>();
      else if (k == "qkv_bias") c.qkv_bias = v.get<bool>();
      else if (k == "class_token") c.class_token = v.get<bool>();
      else if (k == "pre_norm") {
        c.norm_pre = v.get<bool>();
        c.patch_bias = !c.norm_pre;
      } else if (k == "fc_norm") {
        if (!v.is_null()) {
          c.fc_norm = v.get<bool>();
          fc_norm_given = true;
        }
      } else if (k == "global_pool") {
        auto s = v.get<std::string>();
        if (s == "token") c.pool = Pooling::Token;
        else if (s == "avg") c.pool = Pooling::Mean;
        else throw Error("model_args.global_pool '" + s + "' is not supported (token, avg)");
      } else if (k == "act_layer") {
        auto s = v.get<std::string>();
        if (s == "gelu") c.act = Activation::GELU;
        else if (s == "quick_gelu") c.act = Activation::QuickGELU;
        else throw Error("model_args.act_layer '" + s + "' is not supported (gelu, quick_gelu)");
      } else if (k == "drop_rate" || k == "pos_drop_rate" || k == "proj_drop_rate" || k == "attn_drop_rate" ||
                 k == "drop_path_rate" || k == "weight_init" || k == "num_classes") {
        // training-time options (and num_classes, read from the top level)
      } else if ((k == "no_embed_class" || k == "dynamic_img_size") && v.is_boolean() && !v.get<bool>()) {
      } else {
        throw Error("model_args." + k + " is not supported by this ViT");
      }
    }
    // timm: fc_norm=None means "norm after pooling when pooling by average".
    if (!fc_norm_given && args.contains("global_pool")) c.fc_norm = c.pool == Pooling::Mean;
    if (j.contains("num_classes")) c.num_classes = j["num_classes"].get<int64_t>();
    else if (pre.contains("num_classes")) c.num_classes = pre["num_classes"].get<int64_t>();
    if (pre.contains("mean")) c.mean = pre["mean"].get<std::vector<double>>();
    if (pre.contains("std")) c.std = pre["std"].get<std::vector<double>>();
    if (pre.contains("input_size")) {
      auto s = pre["input_size"].get<std::vector<int64_t>>();
      if (s.size() != 3) throw Error("pretrained_cfg.input_size must be [C, H, W]");
      if (!args.contains("in_chans")) c.in_chans = s[0];
      if (!args.contains("img_size")) c.img_size = s[1];
    }
  } catch (const Error& e) {
    throw Error(origin + ": " + e.what());
  } catch (const std::exception& e) {
    throw Error(origin + ": a timm config value has the wrong type: " + e.what());
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(origin + ": " + e.what());
  }
  return c;
}

std::vector<std::string> export_timm(VisionTransformer& model, const std::string& dir) {
  ViTConfig cfg = model->config();
  cfg.head_bias = true;  // timm's head always has a bias; a model without one gets zeros
  const std::string config = timm_hub_config(cfg);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the folder: " + ec.message());
  NamedTensors tensors;
  for (auto& [name, t] : state_dict(*model)) {
    tensors.emplace_back(name, t.detach().to(torch::kCPU, torch::kFloat).contiguous());
    if (name == "head.weight" && !model->head->bias.defined())
      tensors.emplace_back("head.bias", torch::zeros({t.size(0)}, torch::kFloat));
  }
  const std::string weights = (fs::path(dir) / "model.safetensors").string();
  const std::string json_path = (fs::path(dir) / "config.json").string();
  io::save_safetensors(weights, tensors, {{"format", "pt"}, {kConfigMetaKey, cfg.to_json()}});
  atomic_write_file(json_path, [&](std::FILE* f) {
    if (std::fwrite(config.data(), 1, config.size(), f) != config.size()) throw Error(json_path + ": write error");
  });
  return {weights, json_path};
}

}  // namespace hd::model
