// `pretrain-mae`: masked-autoencoder pre-training of a ViT encoder, the MIM teacher.
#include <cstdio>

#include <torch/torch.h>

#include "app/commands.h"
#include "data/dataset.h"
#include "train/mae.h"
#include "util/format.h"

namespace hd::cli {

void add_pretrain(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "pretrain-mae",
      "MAE pre-training (random masking, light decoder, normalised-pixel loss); writes the encoder as "
      "model.safetensors, usable as a distillation teacher");
  struct Opts {
    TrainOptions t;
    std::string arch = "vit_mini_patch7_28";
    train::MaeConfig mae;
    double scale_min = 0.2;
    Runtime rt;
  };
  auto o = std::make_shared<Opts>();
  o->t.lr = 1.5e-4;  // MAE's base lr (at batch 256)
  o->t.weight_decay = 0.05;
  o->t.min_lr = 0;
  sub->add_option("-a,--arch", o->arch, "encoder preset");
  add_train_options(sub, o->t);
  sub->add_option("--mask-ratio", o->mae.mask_ratio, "fraction of patches hidden from the encoder");
  sub->add_option("--decoder-dim", o->mae.decoder_dim, "decoder width");
  sub->add_option("--decoder-depth", o->mae.decoder_depth, "decoder blocks");
  sub->add_option("--decoder-heads", o->mae.decoder_heads, "decoder attention heads");
  sub->add_option("--norm-pix-loss", o->mae.norm_pix_loss, "normalise each target patch (mean 0, variance 1)");
  sub->add_option("--scale-min", o->scale_min, "RandomResizedCrop minimum area fraction");
  add_training_runtime_options(sub, o->rt);
  sub->callback([o] {
    auto device = apply_runtime(o->rt);
    auto cfg = model::preset(o->arch);
    cfg.num_classes = 0;
    cfg.drop_path = 0;
    torch::manual_seed(static_cast<uint64_t>(o->t.seed));
    model::VisionTransformer enc(cfg);
    train::MaskedAutoencoder mae(enc, o->mae);
    train::MaeTask task(mae);
    auto ds = data::open_dataset(o->t.data, o->t.split, {o->t.skip_bad});
    auto lc = model_loader(cfg, true, o->t.batch, o->t.workers, static_cast<uint64_t>(o->t.seed));
    lc.transform.scale_min = o->scale_min;
    const auto& m = o->mae;
    std::string recipe = "command: pretrain-mae\nmodel: " + cfg.to_json() + "\nmask_ratio: " + std::to_string(m.mask_ratio) +
                         "\ndecoder: [" + std::to_string(m.decoder_dim) + ", " + std::to_string(m.decoder_depth) + ", " +
                         std::to_string(m.decoder_heads) + "]\nnorm_pix_loss: " + (m.norm_pix_loss ? "true" : "false") +
                         "\nscale_min: " + std::to_string(o->scale_min);
    auto tc = train_config(o->t, recipe, device);
    apply_run_control(o->t, tc, lc);
    const bool main_rank = setup_training(o->rt, tc, lc);
    data::DataLoader loader(ds, lc);
    if (!tc.quiet)
      std::printf("pretrain-mae %s (%s encoder params; decoder %ldx%ld), %ld of %ld patches visible, on %s: %zu images, "
                  "batch %ld, lr %.3g -> %s\n",
                  cfg.name.c_str(), with_commas(enc->num_params()).c_str(), (long)m.decoder_depth, (long)m.decoder_dim,
                  (long)mae->num_visible(), (long)cfg.num_patches(), ds->name().c_str(), ds->size(), (long)o->t.batch,
                  tc.lr, o->t.out.c_str());
    auto res = train::train(task, loader, tc);
    if (!main_rank || res.interrupted) return;
    write_result(o->t.out, {{"task", "pretrain-mae"}, {"model", cfg.name}, {"data", o->t.data}, {"steps", res.steps},
                            {"seconds", res.seconds}, {"first_loss", res.first_loss}, {"final_loss", res.last_loss}});
    std::printf("pretrain-mae: %ld steps in %.1f s, reconstruction loss %.4f -> %.4f; encoder: %s/model.safetensors\n",
                (long)res.steps, res.seconds, res.first_loss, res.last_loss, o->t.out.c_str());
  });
}

}  // namespace hd::cli
