// A distillation recipe: everything a run needs, read from YAML, validated before any work
// starts. Every ablation of the paper is a recipe file, not a code change.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"

namespace hd::distill {

enum class TargetKind { Features, Block, Msa, Relation };
enum class TargetNorm { None, LayerNorm };  // LayerNorm without affine parameters (FD, dBOT)
// MaskTokens: SimMIM-style mask feature reconstruction: the student sees every position, a
// random drop_ratio of them replaced by a learnable mask token; token targets are compared at
// the masked positions only.
enum class MaskStrategy { None, Random, Direct, Progressive, MaskTokens };
// Decoder between the student and a token-level target (Section 2 baselines): none (a linear
// projection only where widths differ), linear (always a linear layer), attention (N ViT blocks
// of the student's width, a LayerNorm, then a linear layer to the teacher's width).
enum class DecoderKind { None, Linear, Attention };
enum class MaskSource { BlockInput, BlockOutput };  // paper: x^i (block input); PCAE: block output
enum class HeadMapping { None, Average };           // relations with differing head counts
// How a target's per-layer terms combine into its one term (Eq. 3: T'm = [R^{L-1}, R^{L-2}] is ONE
// target under one D; with a mean-reduced D over equal-sized layers that is the mean of the
// per-layer terms). Sum weighs every layer fully (α · number of layers): an explicit choice.
enum class TargetReduce { Mean, Sum };

std::string to_string(TargetKind k);
std::string to_string(MaskStrategy s);
std::string to_string(TargetReduce r);
std::string to_string(TargetNorm n);
std::string to_string(HeadMapping h);
std::string to_string(DecoderKind d);
std::string to_string(MaskSource s);

struct TargetSpec {
  TargetKind kind = TargetKind::Features;
  // 0-based teacher block indices (ignored for `features`, the teacher's final normed output).
  std::vector<int64_t> layers;
  // Student block indices, one per teacher layer; default: the same indices (for `features`:
  // the student's final normed output).
  std::vector<int64_t> student_layers;
  double weight = 1.0;  // α in Eq. 1
  TargetReduce reduce = TargetReduce::Mean;  // over `layers`
  TargetNorm norm = TargetNorm::None;
  // Relations: R = Q·Kᵀ as Eq. 2 defines (default), or scaled by head_dim^-0.5 (the softmax
  // input); CLS row/column included by default.
  bool relation_scaled = false;
  bool include_cls = true;
  HeadMapping head_mapping = HeadMapping::None;
  DecoderKind decoder = DecoderKind::None;
  int64_t decoder_depth = 1;  // blocks of an attention decoder
};

struct TeacherSpec {
  std::string name;
  std::string checkpoint;
  std::string arch;                       // optional preset; default: config in the checkpoint
  std::vector<double> mean, std;          // optional; default: the teacher config's
  // Input size the teacher sees (the student's images resized to it). Default: the teacher's own
  // img_size when its patch grid equals the student's, else student grid × teacher patch (e.g.
  // CLIP-L/14 at 196 px next to a 224 px ViT-B/16 student: both 14×14); its pos_embed is
  // resampled to the grid when that differs from the checkpoint's. Always set after parsing.
  int64_t img_size = 0;
  std::vector<TargetSpec> targets;
};

struct MaskSpec {
  MaskStrategy strategy = MaskStrategy::None;
  std::string teacher;                    // driving teacher (progressive / direct)
  std::vector<int64_t> layers;            // default {0, L/3, 2L/3} of the driving teacher
  double drop_ratio = 0.3;                // K per step
  MaskSource source = MaskSource::BlockInput;
};

struct OptimSpec {
  double lr = 6e-4;             // at `base_batch`; scaled linearly with the batch
  int64_t base_batch = 1024;
  double min_lr = 1e-6;
  double weight_decay = 0.05;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double warmup_epochs = 1.0;
  double clip_grad = 3.0;       // 0: off
};

struct DataSpec {
  std::string dataset = "fashion-mnist";
  std::string split = "train";
  bool augment = true;          // RandomResizedCrop + flip
  double scale_min = 0.08, scale_max = 1.0;
  double hflip = 0.5;
  int workers = 2;
  // Seed of the sample order and the augmentation; default: train.seed. Set apart from
  // train.seed (initialisation, random masking), runs with different initialisations see the
  // same views, and can share a teacher cache (distill --teacher-cache).
  std::optional<uint64_t> seed;
};

struct Recipe {
  std::string name = "recipe";
  std::string origin;           // file it was read from, for messages
  model::ViTConfig student;
  std::vector<TeacherSpec> teachers;
  MaskSpec mask;
  double smooth_l1_beta = 2.0;
  OptimSpec optim;
  DataSpec data;
  int64_t epochs = 1;
  int64_t max_steps = 0;        // 0: no cap
  int64_t batch = 64;
  uint64_t seed = 0;            // initialisation, random masking; and the views unless data.seed
  uint64_t data_seed() const { return data.seed.value_or(seed); }
  int64_t log_every = 10;
  int64_t checkpoint_every = 0; // steps; 0: only at epoch ends

  std::string to_yaml() const;  // the effective recipe, written into the run folder
};

// Reads and validates a recipe. Relative checkpoint paths resolve against the recipe's folder.
// hd::Error names the file and the key for unknown keys, bad values, missing checkpoints,
// out-of-range layers, patch grids that cannot be made equal, head counts without a mapping.
// `overrides` ("KEY=VALUE", KEY a dotted path such as train.epochs, teachers.0.checkpoint or
// teachers.mim.checkpoint (list elements by index or by name), VALUE any YAML) are applied to
// the document first, then validated like the file's own keys.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
Recipe parse_recipe(const std::string& yaml_text, const std::string& origin, const std::string& base_dir = ".",
                    const std::vector<std::string>& overrides = {});

}  // namespace hd::distill
