// The restricted unpickler (see pickle.h). Structured as CPython's _pickle.c: a value stack,
// a stack of marks (positions in the value stack) and a memo; every opcode handler checks its
// operands first. The machine itself never recurses, so nesting costs no C++ stack here.
#include "io/pickle.h"

#include <cstring>
#include <limits>
#include <unordered_map>

#include "util/error.h"

namespace hd::io::pickle {

const Value* Value::get(const std::string& k) const {
  const Value* found = nullptr;
  for (const auto& [key, v] : entries)
    if (key->kind == Kind::Str && key->s == k) found = v;  // the last one wins, as in Python
  return found;
}

std::string Value::type_name() const {
  switch (kind) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: case Kind::BigInt: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return ordered ? "collections.OrderedDict" : "dict";
    case Kind::Set: return "set";
    case Kind::Global: return "global " + s;
    case Kind::Object: return s;
    case Kind::Tensor: return "tensor";
    case Kind::Storage: return "storage";
  }
  return "?";
}

bool storage_dtype(const std::string& class_name, c10::ScalarType* dtype) {
  static const std::pair<const char*, c10::ScalarType> table[] = {
      {"FloatStorage", c10::ScalarType::Float},     {"DoubleStorage", c10::ScalarType::Double},
      {"HalfStorage", c10::ScalarType::Half},       {"BFloat16Storage", c10::ScalarType::BFloat16},
      {"LongStorage", c10::ScalarType::Long},       {"IntStorage", c10::ScalarType::Int},
      {"ShortStorage", c10::ScalarType::Short},     {"CharStorage", c10::ScalarType::Char},
      {"ByteStorage", c10::ScalarType::Byte},       {"BoolStorage", c10::ScalarType::Bool},
      {"UntypedStorage", c10::ScalarType::Byte},  // numel counts bytes
  };
  for (const auto& [name, t] : table)
    if (class_name == name) {
      *dtype = t;
      return true;
    }
  return false;
}

namespace {

std::string hex(uint8_t op) {
  static const char* d = "0123456789abcdef";
  return std::string("0x") + d[op >> 4] + d[op & 15];
}

// The class part of "torch.cuda.FloatStorage" / "torch.storage.UntypedStorage".
std::string last_component(const std::string& q) {
  auto dot = q.rfind('.');
  return dot == std::string::npos ? q : q.substr(dot + 1);
}

}  // namespace

class Unpickler {
 public:
  Unpickler(const char* data, uint64_t size, const std::string& origin) : p_(data), n_(size), origin_(origin) {}

  Document run() {
    while (true) {
      op_at_ = at_;
      const uint8_t op = u8();
      op_ = op;
      if (op == '.') {  // STOP
        if (stack_.size() != base() + 1 || !marks_.empty()) fail("the pickle does not end with exactly one value");
        doc_.root_ = stack_.back();
        doc_.consumed_ = at_;
        return std::move(doc_);
      }
      if (!control_op(op) && !scalar_op(op) && !container_op(op) && !object_op(op)) fail("unsupported pickle opcode");
    }
  }

  // Protocol, frames, marks and the stack (PROTO, FRAME, MARK, POP, POP_MARK, DUP); false when
  // `op` is not one of them.
  bool control_op(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t v = u8();
        if (v > 5) fail("pickle protocol " + std::to_string(v) + " is not supported (2 to 5 are)");
        break;
      }
      case 0x95: {  // FRAME: a length hint, checked and otherwise ignored
        const uint64_t len = le(8);
        if (len > n_ - at_) fail("a frame claims " + std::to_string(len) + " bytes where " +
                                 std::to_string(n_ - at_) + " remain");
        break;
      }
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case '0':  // POP
        if (stack_.size() > base()) stack_.pop_back();
        else pop_mark();
        break;
      case '1': pop_mark(); break;  // POP_MARK
      case '2': need(1); push(stack_.back()); break;  // DUP
      default:
        return false;
    }
    return true;
  }

  // None, bools, ints, floats, strings and bytes; false when `op` is not one of them.
  bool scalar_op(uint8_t op) {
    switch (op) {
      case 'N': push(make(Kind::None)); break;
      case 0x88: case 0x89: {  // NEWTRUE, NEWFALSE
        Value* v = make(Kind::Bool);
        v->b = op == 0x88;
        push(v);
        break;
      }
      case 'J': push_int(static_cast<int32_t>(static_cast<uint32_t>(le(4)))); break;  // BININT
      case 'K': push_int(static_cast<int64_t>(le(1))); break;                         // BININT1
      case 'M': push_int(static_cast<int64_t>(le(2))); break;                         // BININT2
      case 0x8a: push_long(le(1)); break;                                             // LONG1
      case 0x8b: {                                                                    // LONG4
        const auto len = static_cast<int32_t>(static_cast<uint32_t>(le(4)));
        if (len < 0) fail("LONG4 with a negative length");
        push_long(static_cast<uint64_t>(len));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE 754 double
        uint64_t bits = 0;
        const char* b = take(8);
        for (int k = 0; k < 8; ++k) bits = bits << 8 | static_cast<uint8_t>(b[k]);
        Value* v = make(Kind::Float);
        std::memcpy(&v->f, &bits, sizeof bits);
        push(v);
        break;
      }
      case 'X': push_text(Kind::Str, le(4)); break;     // BINUNICODE
      case 0x8c: push_text(Kind::Str, le(1)); break;    // SHORT_BINUNICODE
      case 0x8d: push_text(Kind::Str, le(8)); break;    // BINUNICODE8
      case 'U': push_text(Kind::Str, le(1)); break;     // SHORT_BINSTRING (Python 2 str)
      case 'T': {                                       // BINSTRING
        const auto len = static_cast<int32_t>(static_cast<uint32_t>(le(4)));
        if (len < 0) fail("BINSTRING with a negative length");
        push_text(Kind::Str, static_cast<uint64_t>(len));
        break;
      }
      case 'C': push_text(Kind::Bytes, le(1)); break;   // SHORT_BINBYTES
      case 'B': push_text(Kind::Bytes, le(4)); break;   // BINBYTES
      case 0x8e: push_text(Kind::Bytes, le(8)); break;  // BINBYTES8
      case 0x96: push_text(Kind::Bytes, le(8)); break;  // BYTEARRAY8
      default:
        return false;
    }
    return true;
  }

  // Tuples, lists, dicts and sets, and what fills them; false when `op` is not one of them.
  bool container_op(uint8_t op) {
    switch (op) {
      case ')': push(make(Kind::Tuple)); break;         // EMPTY_TUPLE
      case 't': {                                       // TUPLE
        Value* v = make(Kind::Tuple);
        v->items = pop_mark();
        push(v);
        break;
      }
      case 0x85: case 0x86: case 0x87: {  // TUPLE1, TUPLE2, TUPLE3
        const size_t k = op - 0x84u;
        need(k);
        Value* v = make(Kind::Tuple);
        v->items.assign(stack_.end() - static_cast<std::ptrdiff_t>(k), stack_.end());
        stack_.resize(stack_.size() - k);
        push(v);
        break;
      }
      case ']': push(make(Kind::List)); break;  // EMPTY_LIST
      case 'l': {                               // LIST
        Value* v = make(Kind::List);
        v->items = pop_mark();
        push(v);
        break;
      }
      case 'a': {  // APPEND
        need(2);
        Value* x = pop();
        append(stack_.back(), {x});
        break;
      }
      case 'e': {  // APPENDS
        auto xs = pop_mark();
        need(1);
        append(stack_.back(), std::move(xs));
        break;
      }
      case '}': push(make(Kind::Dict)); break;  // EMPTY_DICT
      case 'd': {                               // DICT
        auto kv = pop_mark();
        Value* v = make(Kind::Dict);
        set_items(v, kv);
        push(v);
        break;
      }
      case 's': {  // SETITEM
        need(3);
        Value* val = pop();
        Value* key = pop();
        set_items(stack_.back(), {key, val});
        break;
      }
      case 'u': {  // SETITEMS
        auto kv = pop_mark();
        need(1);
        set_items(stack_.back(), kv);
        break;
      }
      case 0x8f: push(make(Kind::Set)); break;  // EMPTY_SET
      case 0x90: {                              // ADDITEMS
        auto xs = pop_mark();
        need(1);
        if (stack_.back()->kind != Kind::Set) fail("ADDITEMS to a " + stack_.back()->type_name());
        auto& items = stack_.back()->items;
        items.insert(items.end(), xs.begin(), xs.end());
        break;
      }
      case 0x91: {  // FROZENSET
        Value* v = make(Kind::Set);
        v->items = pop_mark();
        push(v);
        break;
      }
      default:
        return false;
    }
    return true;
  }

  // Globals, calls (recorded, never run), BUILD, persistent ids and the memo; false when `op` is not one of them.
  bool object_op(uint8_t op) {
    switch (op) {
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = line();
        std::string name = line();
        push_global(module, name);
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        need(2);
        Value* name = pop();
        Value* module = pop();
        if (module->kind != Kind::Str || name->kind != Kind::Str) fail("STACK_GLOBAL needs two strings");
        push_global(module->s, name->s);
        break;
      }
      case 'R': {  // REDUCE
        need(2);
        Value* args = pop();
        Value* callable = pop();
        push(call(callable, args));
        break;
      }
      case 0x81: {  // NEWOBJ
        need(2);
        Value* args = pop();
        Value* cls = pop();
        push(call(cls, args));
        break;
      }
      case 0x92: {  // NEWOBJ_EX
        need(3);
        pop();  // keyword arguments: only ever recorded, never used
        Value* args = pop();
        Value* cls = pop();
        push(call(cls, args));
        break;
      }
      case 'b': {  // BUILD
        need(2);
        Value* st = pop();
        Value* obj = stack_.back();
        // Objects keep their state (TorchScript modules: their attributes); a state dict's
        // OrderedDict keeps its `_metadata`; anything else has no use for it.
        if (obj->kind == Kind::Object || obj->kind == Kind::Dict) obj->state = st;
        break;
      }
      case 'Q': {  // BINPERSID
        need(1);
        push(persistent(pop()));
        break;
      }
      case 'h': get(le(1)); break;     // BINGET
      case 'j': get(le(4)); break;     // LONG_BINGET
      case 'q': put(le(1)); break;     // BINPUT
      case 'r': put(le(4)); break;     // LONG_BINPUT
      case 0x94: put(memo_.size()); break;  // MEMOIZE
      default:
        return false;
    }
    return true;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(origin_ + ": byte " + std::to_string(op_at_) + ": " + what + " (opcode " + hex(op_) + ")");
  }

  // --- input --------------------------------------------------------------------------------
  const char* take(uint64_t k) {
    if (k > n_ - at_) {
      if (at_ == op_at_) fail("the pickle ends without STOP");
      fail("an argument claims " + std::to_string(k) + " bytes where " + std::to_string(n_ - at_) + " remain");
    }
    const char* b = p_ + at_;
    at_ += k;
    return b;
  }
  uint8_t u8() { return static_cast<uint8_t>(*take(1)); }
  uint64_t le(int bytes) {
    const char* b = take(static_cast<uint64_t>(bytes));
    uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; --k) v = v << 8 | static_cast<uint8_t>(b[k]);
    return v;
  }
  std::string line() {
    const void* nl = std::memchr(p_ + at_, '\n', n_ - at_);
    if (!nl) fail("unterminated text argument");
    const uint64_t len = static_cast<uint64_t>(static_cast<const char*>(nl) - (p_ + at_));
    std::string s(p_ + at_, len);
    at_ += len + 1;
    return s;
  }

  // --- values and stacks ---------------------------------------------------------------------
  Value* make(Kind k) {
    if (doc_.values_.size() >= kMaxValues) fail("more than " + std::to_string(kMaxValues) + " values");
    doc_.values_.push_back(std::make_unique<Value>());
    Value* v = doc_.values_.back().get();
    v->kind = k;
    v->at = op_at_;
    return v;
  }
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  void need(size_t k) {
    if (stack_.size() - base() < k) fail("stack underflow");
  }
  void push(Value* v) { stack_.push_back(v); }
  Value* pop() {
    need(1);
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value*> out(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return out;
  }
  void push_int(int64_t i) {
    Value* v = make(Kind::Int);
    v->i = i;
    push(v);
  }
  void push_long(uint64_t len) {
    const char* b = take(len);
    if (len <= 8) {
      uint64_t u = 0;
      for (uint64_t k = len; k-- > 0;) u = u << 8 | static_cast<uint8_t>(b[k]);
      if (len > 0 && len < 8 && (static_cast<uint8_t>(b[len - 1]) & 0x80)) u |= ~uint64_t{0} << (8 * len);  // sign
      push_int(static_cast<int64_t>(u));
      return;
    }
    Value* v = make(Kind::BigInt);
    v->s.assign(b, len);
    push(v);
  }
  void push_text(Kind k, uint64_t len) {
    const char* b = take(len);
    Value* v = make(k);
    v->s.assign(b, len);
    push(v);
  }
  void push_global(const std::string& module, const std::string& name) {
    if (module.empty() || name.empty()) fail("a global without a module or a name");
    Value* v = make(Kind::Global);
    v->s = module + "." + name;
    push(v);
  }
  void get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo index " + std::to_string(index) + " was never stored");
    push(it->second);
  }
  void put(uint64_t index) {
    need(1);
    memo_[index] = stack_.back();
  }
  void append(Value* target, std::vector<Value*> xs) {
    if (target->kind == Kind::List) target->items.insert(target->items.end(), xs.begin(), xs.end());
    else if (target->kind != Kind::Object) fail("APPEND to a " + target->type_name());
    // Appends to an opaque object (a deque, ...) are dropped with it.
  }
  void set_items(Value* target, const std::vector<Value*>& kv) {
    if (kv.size() % 2) fail("an odd number of values for a dict's keys and values");
    if (target->kind == Kind::Object) return;  // __setitem__ on an opaque object: dropped
    if (target->kind != Kind::Dict) fail("SETITEM on a " + target->type_name());
    for (size_t k = 0; k < kv.size(); k += 2) target->entries.emplace_back(kv[k], kv[k + 1]);
  }

  // --- globals -------------------------------------------------------------------------------
  // REDUCE / NEWOBJ: the few callables a state dict is made of are applied to their checked
  // arguments; anything else becomes an opaque Object (never called).
  Value* call(Value* callable, Value* args) {
    if (args->kind != Kind::Tuple) fail("the arguments of a call are a " + args->type_name() + ", not a tuple");
    if (callable->kind != Kind::Global) {
      if (callable->kind == Kind::Object) return object(callable->s, args);  // e.g. a NEWOBJ of an opaque class
      fail("a call of a " + callable->type_name());
    }
    return apply(callable->s, args->items);
  }

  Value* object(const std::string& name, Value* args) {
    Value* v = make(Kind::Object);
    v->s = name;
    v->items = args->items;
    return v;
  }

  Value* apply(const std::string& fn, const std::vector<Value*>& a) {
    if (fn == "collections.OrderedDict") {
      Value* v = make(Kind::Dict);
      v->ordered = true;
      if (a.empty()) return v;
      // OrderedDict([(k, v), ...]) or OrderedDict(other_dict)
      if (a.size() == 1 && a[0]->kind == Kind::Dict) {
        v->entries = a[0]->entries;
        return v;
      }
      if (a.size() == 1 && (a[0]->kind == Kind::List || a[0]->kind == Kind::Tuple)) {
        for (Value* kv : a[0]->items) {
          if (kv->kind != Kind::Tuple || kv->items.size() != 2) fail("OrderedDict from something other than pairs");
          v->entries.emplace_back(kv->items[0], kv->items[1]);
        }
        return v;
      }
      fail("OrderedDict with unexpected arguments");
    }
    if (fn == "torch._utils._rebuild_tensor_v2" || fn == "torch._utils._rebuild_tensor") return tensor(fn, a);
    if (fn == "torch._utils._rebuild_parameter" || fn == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || a[0]->kind != Kind::Tensor) fail(fn + " of something other than a tensor");
      return a[0];
    }
    if (fn == "torch._utils._rebuild_from_type_v2") {
      // (function, type, args, state): a tensor subclass (Parameter, ...) rebuilt by `function`.
      if (a.size() < 3 || a[0]->kind != Kind::Global || a[2]->kind != Kind::Tuple)
        fail("_rebuild_from_type_v2 with unexpected arguments");
      Value* t = apply(a[0]->s, a[2]->items);
      if (t->kind != Kind::Tensor) fail("_rebuild_from_type_v2 of something other than a tensor");
      return t;
    }
    if (fn == "torch.Size") {
      if (a.size() != 1 || a[0]->kind != Kind::Tuple) fail("torch.Size with unexpected arguments");
      return a[0];
    }
    Value* v = make(Kind::Object);
    v->s = fn;
    v->items = a;
    return v;
  }

  static bool as_int(const Value* v, int64_t* out) {
    if (v->kind == Kind::Int) {
      *out = v->i;
      return true;
    }
    if (v->kind == Kind::Bool) {
      *out = v->b;
      return true;
    }
    return false;
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  Value* tensor(const std::string& fn, const std::vector<Value*>& a) {
    if (a.size() < 4 || a[0]->kind != Kind::Storage) fail(fn + " with unexpected arguments");
    const StorageRef& st = a[0]->tensor.storage;
    Value* v = make(Kind::Tensor);
    TensorRef& t = v->tensor;
    t.storage = st;
    if (!as_int(a[1], &t.offset) || t.offset < 0) fail(fn + ": the storage offset is not a non-negative int");
    for (int k : {2, 3}) {
      const Value* dims = a[static_cast<size_t>(k)];
      if (dims->kind != Kind::Tuple && dims->kind != Kind::List) fail(fn + ": sizes and strides must be tuples");
      if (dims->items.size() > kMaxRank) fail(fn + ": more than " + std::to_string(kMaxRank) + " dimensions");
      auto& out = k == 2 ? t.sizes : t.strides;
      for (const Value* d : dims->items) {
        int64_t x = 0;
        if (!as_int(d, &x) || x < 0) fail(fn + ": a size or stride is not a non-negative int");
        out.push_back(x);
      }
    }
    if (t.sizes.size() != t.strides.size())
      fail(fn + ": " + std::to_string(t.sizes.size()) + " sizes but " + std::to_string(t.strides.size()) + " strides");
    // The last element the view reaches must lie inside the storage: offset + sum((size-1)*stride).
    // Every term is checked for overflow (sizes and strides come from the file).
    bool empty = false;
    uint64_t numel = 1;
    for (int64_t s : t.sizes) {
      if (s == 0) empty = true;
      else if (!empty && __builtin_mul_overflow(numel, static_cast<uint64_t>(s), &numel))
        fail(fn + ": the tensor's element count overflows");
    }
    if (!empty && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(fn + ": the tensor's element count overflows");
    uint64_t last = static_cast<uint64_t>(t.offset);
    if (!empty)
      for (size_t d = 0; d < t.sizes.size(); ++d) {
        uint64_t reach = 0;
        if (__builtin_mul_overflow(static_cast<uint64_t>(t.sizes[d] - 1), static_cast<uint64_t>(t.strides[d]), &reach) ||
            __builtin_add_overflow(last, reach, &last))
          fail(fn + ": the view's extent overflows");
      }
    const auto storage_numel = static_cast<uint64_t>(st.numel);
    // More elements than the storage holds (an expanded view, stride 0) would be materialised at
    // their full size: a few bytes of pickle could ask for terabytes. State dicts never do that.
    if (!empty && numel > storage_numel)
      fail(fn + ": a view of " + std::to_string(numel) + " elements of a storage of " + std::to_string(st.numel) +
           " (expanded tensors are not read)");
    if (empty ? last > storage_numel : last >= storage_numel)
      fail(fn + ": the view (offset " + std::to_string(t.offset) + ", last element " + std::to_string(last) +
           ") lies outside its storage '" + st.key + "' of " + std::to_string(st.numel) + " elements");
    return v;
  }

  // ('storage', TYPE, KEY, LOCATION, NUMEL[, VIEW_METADATA]): torch.save's persistent ids (the
  // sixth item only in legacy files: None or (VIEW_KEY, OFFSET, VIEW_NUMEL)).
  Value* persistent(Value* pid) {
    const auto& it = pid->items;
    if (pid->kind != Kind::Tuple || it.size() < 5 || it.size() > 6 || it[0]->kind != Kind::Str ||
        it[0]->s != "storage")
      fail("a persistent id other than ('storage', type, key, location, numel)");
    if (it[1]->kind != Kind::Global) fail("a storage type that is a " + it[1]->type_name());
    Value* v = make(Kind::Storage);
    StorageRef& st = v->tensor.storage;
    if (!storage_dtype(last_component(it[1]->s), &st.dtype) || it[1]->s.rfind("torch.", 0) != 0)
      fail("unsupported storage type '" + it[1]->s + "'");
    if (it[2]->kind != Kind::Str || it[2]->s.empty() || it[2]->s.size() > 64) fail("a storage key that is not a short string");
    st.key = it[2]->s;
    if (it[3]->kind != Kind::Str) fail("a storage location that is not a string");
    st.location = it[3]->s;
    if (it[4]->kind != Kind::Int || it[4]->i < 0) fail("a storage size that is not a non-negative int");
    st.numel = it[4]->i;
    if (it.size() == 6 && it[5]->kind != Kind::None) {
      const Value* view = it[5];
      int64_t off = 0, n = 0;
      if (view->kind != Kind::Tuple || view->items.size() != 3 || !as_int(view->items[1], &off) ||
          !as_int(view->items[2], &n) || off < 0 || n < 0 || off > st.numel || n > st.numel - off)
        fail("a storage view outside its storage");
      st.view_offset = off;
      st.numel = n;
    }
    return v;
  }

  const char* p_;
  uint64_t n_;
  std::string origin_;
  uint64_t at_ = 0, op_at_ = 0;
  uint8_t op_ = 0;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
  Document doc_;
};

Document parse(const char* data, uint64_t size, const std::string& origin) {
  return Unpickler(data, size, origin).run();
}

}  // namespace hd::io::pickle
