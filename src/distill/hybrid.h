// Hybrid Distillation (Eq. 1): a student ViT trained from frozen teachers' targets, with the
// student seeing only the tokens kept by the (progressive redundant) token mask.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "distill/recipe.h"
#include "model/vit.h"

namespace hd::distill {

class TeacherCache;

struct Teacher {
  TeacherSpec spec;
  model::VisionTransformer model{nullptr};
  torch::ScalarType dtype = torch::kFloat;  // of its weights, and of the input it is given
};

// Loads every teacher of the recipe (frozen, eval mode) onto `device`, in `dtype` (float32, or
// bfloat16 for bf16 runs: their inputs are cast to it, their targets back to the loss's type).
std::vector<Teacher> load_teachers(const Recipe& recipe, const c10::Device& device,
                                   torch::ScalarType dtype = torch::kFloat);

// Smooth L1 (Huber) distance averaged over elements:
//   d(x) = 0.5 x^2 / beta  if |x| < beta,  |x| - 0.5 beta  otherwise;  beta = 0 gives L1.
torch::Tensor smooth_l1(const torch::Tensor& pred, const torch::Tensor& target, double beta);

// Gathers token-level tensors at kept tokens. `x` [B,N,D] (or relations [B,H,N,N], gathered on
// both token axes) with `prefix` leading CLS tokens; `keep` [B,K] patch indices. With
// include_prefix the prefix tokens come first, then the kept patches in `keep` order.
torch::Tensor gather_tokens(const torch::Tensor& x, const torch::Tensor& keep, int64_t prefix, bool include_prefix);
torch::Tensor gather_relation(const torch::Tensor& r, const torch::Tensor& keep, int64_t prefix, bool include_prefix);

// Maps student tokens to a teacher's token target: optional ViT blocks (attention decoder),
// then a linear layer where asked for or where the widths differ.
class DecoderImpl : public torch::nn::Module {
 public:
  DecoderImpl(const model::ViTConfig& student, int64_t out_dim, const TargetSpec& spec);
  torch::Tensor forward(torch::Tensor x);
  torch::nn::ModuleList blocks{nullptr};
  model::LayerNorm norm{nullptr};
  torch::nn::Linear proj{nullptr};
  bool empty() const { return !proj && !blocks; }
};
TORCH_MODULE(Decoder);

// One target's term: its per-layer terms reduced (mean by default, Eq. 3), and its weight.
struct TargetTerm {
  std::string name;   // "<teacher>.<kind>.<mean|sum>", or the single per-layer term's name
  torch::Tensor value;
  double weight = 1.0;
  std::vector<std::string> layers;  // the per-layer terms it reduces
};

struct DistillOutput {
  torch::Tensor loss;                                           // Σ_targets weight · reduce(per-layer terms)
  std::vector<std::pair<std::string, torch::Tensor>> terms;     // per layer: "<teacher>.<kind>.<layer|last>" -> scalar
  std::vector<TargetTerm> target_terms;                         // per target, as they enter `loss`
  torch::Tensor keep;                                           // [B,K] patch indices the student sees
  torch::Tensor masked;                                         // mask_tokens: [B,M] reconstructed positions
  // Filled with keep_tensors: the targets and predictions exactly as the loss compares them.
  std::vector<std::pair<std::string, torch::Tensor>> targets, preds;
};

class HybridDistillerImpl : public torch::nn::Module {
 public:
  HybridDistillerImpl(const Recipe& recipe, model::VisionTransformer student, std::vector<Teacher> teachers);

  // `images` normalised with the student's mean/std; each teacher gets them re-normalised with
  // its own and resized (bilinear) to its own img_size. `gen` drives random masking (and nothing else).
  DistillOutput forward(const torch::Tensor& images, bool keep_tensors = false,
                        c10::optional<at::Generator> gen = c10::nullopt);

  // The token mask for a batch (teachers run on the full image; no gradients).
  torch::Tensor compute_mask(const std::vector<torch::Tensor>& teacher_inputs, std::vector<model::Taps>& teacher_taps,
                             int64_t batch, c10::optional<at::Generator> gen);

  model::VisionTransformer student{nullptr};
  // Trained decoders / width adapters per token target, discarded after distillation.
  std::map<std::string, Decoder> decoders;
  torch::Tensor mask_token;  // mask_tokens strategy only
  std::vector<Teacher>& teachers() { return teachers_; }
  // What forward() taps from teacher `ti` (the layers its targets and the mask need).
  const model::TapSpec& teacher_tap_spec(size_t ti) const { return teacher_taps_.at(ti); }
  const Recipe& recipe() const { return recipe_; }
  // Teachers' taps through `cache` from now on (distill/teacher_cache.h); each teacher's
  // checkpoint file is hashed here, once. Null detaches it.
  void set_teacher_cache(std::shared_ptr<TeacherCache> cache);

  // Whether a named trainable parameter (student.* / dec_* / mask_token) takes weight decay.
  bool decays(const std::string& name, const torch::Tensor& p) const;

 private:
  std::string term_name(const Teacher& t, const TargetSpec& s, size_t layer_idx) const;
  torch::Tensor teacher_input(size_t ti, const torch::Tensor& images) const;

  Recipe recipe_;
  std::vector<Teacher> teachers_;  // not registered: frozen, never trained or saved with the student
  std::vector<model::TapSpec> teacher_taps_;
  model::TapSpec student_taps_;
  size_t mask_teacher_ = 0;
  std::shared_ptr<TeacherCache> cache_;
};
TORCH_MODULE(HybridDistiller);

}  // namespace hd::distill
