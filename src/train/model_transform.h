// What a model expects of its input images, as a data transform: size, channels, mean/std.
#pragma once

#include "data/transforms.h"
#include "model/config.h"

namespace hd::train {

// Train (RandomResizedCrop + flip) or eval (resize + center crop) transform producing the
// model's input: img_size, in_chans, normalised with the model's mean/std. Small inputs
// (<= 32 px, e.g. 28x28 Fashion-MNIST) take no resize margin in eval (crop_pct 1).
data::TransformConfig model_transform(const model::ViTConfig& cfg, bool train);

}  // namespace hd::train
