// Dense evaluation of a frozen encoder: a linear classifier on every patch token (shared over
// positions) predicts the class of the image region under it, on 2x2 mosaics of a classification
// data set (data/mosaic.h); scored by per-token accuracy and mean IoU, a small stand-in for the
// detection / segmentation transfer that rewards local, diverse token features.
#pragma once

#include <cstdint>
#include <vector>

#include <c10/core/Device.h>

#include "data/mosaic.h"
#include "eval/evaluate.h"
#include "model/vit.h"

namespace hd::eval {

// The patch tokens after the final norm (prefix tokens dropped) of mosaics 0 .. count-1, each
// labelled with its patch's class: features float32 [count * patches, D], labels [count * patches],
// mosaic-major, patches row-major. The mosaics are normalised with the model's mean / std; their
// size, patch and channels must be the model's (hd::Error otherwise). Eval mode, no gradients;
// runs under whatever autocast the caller set.
FeatureSet extract_tokens(model::VisionTransformer& model, const data::MosaicDataset& mosaics, int64_t count,
                          const c10::Device& device, int64_t batch = 256);

// Confusion matrix int64 [C,C] of predicted vs true classes (row: truth, column: prediction).
torch::Tensor confusion_matrix(const torch::Tensor& pred, const torch::Tensor& truth, int64_t num_classes);

struct DenseMetrics {
  double accuracy = 0;      // correct tokens / all tokens
  double miou = 0;          // mean IoU over the classes present in the truth or the predictions
  std::vector<double> iou;  // per class TP / (TP + FP + FN); NaN for a class absent from both
  int64_t classes = 0;      // classes in the mean
};
// Accuracy and (m)IoU from a confusion matrix (confusion_matrix's layout).
DenseMetrics dense_metrics(const torch::Tensor& confusion);

struct DenseResult {
  DenseMetrics test;
  double train_accuracy = 0;
  torch::Tensor confusion;  // int64 [C,C] on the test tokens
  ProbeResult probe;
};
// linear_probe on the training tokens, scored on the test tokens.
DenseResult dense_probe(const FeatureSet& train, const FeatureSet& test, int64_t num_classes, const ProbeConfig& cfg);

}  // namespace hd::eval
