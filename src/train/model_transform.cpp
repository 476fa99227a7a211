#include "train/model_transform.h"

namespace hd::train {

data::TransformConfig model_transform(const model::ViTConfig& cfg, bool train) {
  data::TransformConfig t;
  t.size = cfg.img_size;
  t.train = train;
  t.channels = cfg.in_chans;
  t.mean = cfg.mean;
  t.std = cfg.std;
  if (cfg.img_size <= 32) t.crop_pct = 1.0;
  return t;
}

}  // namespace hd::train
