// Decoding and the image transform in one step, for samples held as encoded files (JPEG, PNG).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>

#include <torch/types.h>

#include "data/transforms.h"

namespace hd::data {

// transform_image(decode_image(data, size, source), cfg, rng), with the same random draws and
// the same geometry, and for JPEGs much less work:
//   - the crop window (train) or the resize + center crop (eval) is planned from the header's
//     size before anything is decoded;
//   - only the rows and columns the resize reads are decoded (decode_jpeg_region);
//   - training with cfg.jpeg_dct_scaling: at the smallest libjpeg scale M/8 of 1/8, 1/4, 1/2
//     that keeps the crop at least cfg.size pixels on both sides (a 1024x768 photo cropped to
//     60% of its area and resized to 224 decodes at 1/2); evaluation always decodes at full size;
//   - resize (antialiased bilinear, as resize()), flip, conversion to float, channel conversion
//     and normalisation are one pass over the decoded pixels.
// Evaluation, and training with cfg.jpeg_dct_scaling off, equal the generic path up to float
// rounding.
// PNGs, CMYK JPEGs and an eval crop larger than the resized image take the generic path.
// If `out` is given (contiguous float32 [channels, size, size], e.g. a batch slot) the result is
// written there and `out` returned; otherwise a new tensor is.
// Throws hd::Error naming `source` for an undecodable file (as decode_image) or a bad config.
torch::Tensor decode_transform(const uint8_t* data, size_t size, const std::string& source, const TransformConfig& cfg,
                               std::mt19937_64& rng, torch::Tensor out = {});

// The libjpeg scale numerator M (of M/8) decode_transform uses for a source window of
// window_h x window_w full-size pixels that becomes out_h x out_w pixels: the smallest M of 1, 2,
// 4 that does not make the window smaller than the output on either side, else 8.
int jpeg_scale_for(double window_h, double window_w, int64_t out_h, int64_t out_w);

}  // namespace hd::data
