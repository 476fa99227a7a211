// Downstream evaluation of a frozen encoder: features of a data set, weighted k-NN (as DINO's
// evaluation), and a linear probe trained on the features.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <c10/core/Device.h>

#include "data/loader.h"
#include "model/vit.h"

namespace hd::eval {

// What a feature vector is: the CLS token or the mean of the patch tokens after the final norm,
// or the classifier's input (the model's own pooling, then its fc_norm where it has one: what
// its head reads, the features of a fine-tuned timm model with global_pool='avg').
enum class Pool { Cls, Mean, Head };
Pool parse_pool(const std::string& s);  // "cls" | "mean" | "head"
std::string to_string(Pool p);

struct FeatureSet {
  torch::Tensor features;  // float32 [N,D]
  torch::Tensor labels;    // int64 [N]
};

// Runs `fn(images, labels)` over `loader`'s epoch 0, at most `limit` images (0: all; the last
// batch is cut to fit), with `model` in eval mode and no gradients; the mode is restored after.
void eval_batches(model::VisionTransformer& model, data::DataLoader& loader, int64_t limit,
                  const std::function<void(const torch::Tensor& images, const torch::Tensor& labels)>& fn);

// Pooled features (see Pool), as float32 on the CPU, for the images of `loader`'s epoch 0, at
// most `limit` of them (0: all). Eval mode, no gradients.
FeatureSet extract_features(model::VisionTransformer& model, data::DataLoader& loader, Pool pool,
                            const c10::Device& device, int64_t limit = 0);

// Saves / loads a FeatureSet as safetensors (`features`, `labels`); load returns false when the
// file is absent, throws hd::Error naming it when it is unusable.
void save_features(const std::string& path, const FeatureSet& f, const std::string& key);
bool load_features(const std::string& path, const std::string& key, FeatureSet& out);

// Weighted k-NN class scores [M, num_classes]: features are L2-normalised, the k most similar
// training samples (cosine) vote for their class with weight exp(similarity / temperature).
torch::Tensor knn_scores(const FeatureSet& train, const torch::Tensor& test_features, int64_t k, double temperature,
                         int64_t num_classes);

// Top-1 accuracy (0..1) of `model`'s classifier over `loader`'s epoch 0 (at most `limit` images;
// 0: all), in eval mode.
double evaluate_top1(model::VisionTransformer& model, data::DataLoader& loader, const c10::Device& device,
                     int64_t limit = 0);

// Top-1 accuracy (0..1) of class scores [N,C] against labels [N].
double top1(const torch::Tensor& scores, const torch::Tensor& labels);

struct ProbeConfig {
  int64_t epochs = 50;
  int64_t batch = 256;
  double lr = 1e-2;
  double weight_decay = 0.0;
  double whiten_eps = 1e-4;  // eigenvalue floor of the whitening, relative to the largest
  uint64_t seed = 0;
};
struct ProbeResult {
  double train_top1 = 0, test_top1 = 0;
  torch::Tensor weight, bias, mean, whiten;  // logits = ((x - mean) · whiten) · weightᵀ + bias
};

// Linear classifier on frozen features, centred and ZCA-whitened with the training set's
// statistics (a linear map, so the classifier family is unchanged; MAE's probe standardises
// per dimension with a non-affine BatchNorm), trained with AdamW + cosine schedule on
// cross-entropy; deterministic for a seed.
ProbeResult linear_probe(const FeatureSet& train, const FeatureSet& test, int64_t num_classes, const ProbeConfig& cfg);

// The probe's class scores [N,C] for features [N,D] (float32).
torch::Tensor probe_logits(const ProbeResult& probe, const torch::Tensor& features);

// The probe as one affine map of the raw features, its centring and whitening folded in:
// features · weightᵀ + bias equals probe_logits(probe, features). A classifier head to start
// fine-tuning from (weight [C,D], bias [C]).
std::pair<torch::Tensor, torch::Tensor> probe_as_linear(const ProbeResult& probe);

}  // namespace hd::eval
