// Files other tools read: TensorBoard event files (checked with an independent, standard-library
// Python reader against metrics.jsonl), and the build description of --version / result.json.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "app/cli_util.h"

namespace fs = std::filesystem;
using namespace hd::testing;

namespace {

std::vector<std::string> events_files(const std::string& dir) {
  std::vector<std::string> out;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Every record of the run folder's event files, as the Python reader decodes them.
std::vector<nlohmann::json> read_events(const std::string& dir) {
  std::string cmd = "python3 " + std::string(HD_SOURCE_DIR) + "/tests/scripts/read_tfevents.py";
  for (auto& f : events_files(dir)) cmd += " " + f;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << out;
  std::vector<nlohmann::json> evs;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) evs.push_back(nlohmann::json::parse(line));
  return evs;
}

std::vector<nlohmann::json> read_metrics(const std::string& dir) {
  std::vector<nlohmann::json> out;
  std::istringstream in(slurp(dir + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// Scalars of the training steps, by step; fails the test if a step is logged twice.
std::map<int64_t, nlohmann::json> train_scalars(const std::vector<nlohmann::json>& evs) {
  std::map<int64_t, nlohmann::json> by_step;
  for (auto& e : evs) {
    if (e.contains("file_version")) {
      EXPECT_EQ(e["file_version"], "brain.Event:2");
      continue;
    }
    if (!e["values"].contains("train/loss")) continue;
    const int64_t step = e["step"];
    EXPECT_FALSE(by_step.count(step)) << "step " << step << " written twice";
    by_step[step] = e["values"];
  }
  return by_step;
}

void expect_events_match_metrics(const std::string& dir) {
  auto metrics = read_metrics(dir);
  auto scalars = train_scalars(read_events(dir));
  ASSERT_EQ(scalars.size(), metrics.size());
  for (auto& m : metrics) {
    const int64_t step = m["step"];
    ASSERT_TRUE(scalars.count(step)) << "step " << step;
    auto& v = scalars[step];
    for (auto& [k, x] : m.items()) {
      if (k == "step" || k == "time") continue;
      ASSERT_TRUE(v.contains("train/" + k)) << k << " at step " << step;
      // Written as float32: equal to the metrics value rounded to float.
      EXPECT_EQ(v["train/" + k].get<double>(), static_cast<double>(static_cast<float>(x.get<double>())))
          << k << " at step " << step;
    }
  }
}

const std::string kTrainBase =
    "train --precision fp32 -a vit_mini_patch7_28 -b 16 --log-every 2 --checkpoint-every 2 --eval-limit 32 -t 1 -q ";
const std::string kTrain = kTrainBase + "--max-steps 6 ";

}  // namespace

TEST(TensorBoard, EventsHoldTheMetricsAndTheEvaluation) {
  auto dir = scratch("ecosystem", "EventsHoldTheMetricsAndTheEvaluation");
  auto r = run(kTrain + "-o " + dir + "/run");
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_EQ(events_files(dir + "/run").size(), 2u) << "the training's file and the evaluation's";
  expect_events_match_metrics(dir + "/run");
  auto evs = read_events(dir + "/run");
  auto result = read_json(dir + "/run/result.json");
  int found = 0, throughput = 0;
  for (auto& e : evs) {
    if (e["values"].contains("eval/top1")) {
      ++found;
      EXPECT_EQ(e["step"], 6);
      EXPECT_FLOAT_EQ(e["values"]["eval/top1"].get<double>(), result["top1"].get<double>());
    }
    if (e["values"].contains("train/images_per_s")) {
      ++throughput;
      EXPECT_GT(e["values"]["train/images_per_s"].get<double>(), 0);
      EXPECT_EQ(e["step"].get<int64_t>() % 2, 1) << "at the logging steps";
    }
  }
  EXPECT_EQ(found, 1);
  EXPECT_EQ(throughput, 3);

  r = run(kTrain + "--no-tensorboard -o " + dir + "/off");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(events_files(dir + "/off").empty());
}

TEST(Trainer, StopAfterTheLastStepFinishesTheRun) {
  // --stop-after at the run's last step (or beyond) is the end of the run: the final model is
  // written, nothing is reported as interrupted.
  auto dir = scratch("ecosystem", "StopAfterTheLastStep");
  auto r = run(kTrain + "--stop-after 6 -o " + dir + "/a");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/a/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/a/result.json"));
  // Before the last step it stops with a checkpoint and no final model.
  r = run(kTrain + "--stop-after 5 -o " + dir + "/b");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/b/checkpoint.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/b/model.safetensors"));
}

TEST(TensorBoard, ResumeDoesNotDuplicateSteps) {
  auto dir = scratch("ecosystem", "ResumeDoesNotDuplicateSteps");
  const std::string run_dir = dir + "/run";
  // A run killed after step 3 whose last checkpoint is at step 2: stop at 2, keep that
  // checkpoint, continue to 4 (events up to step 3), put the step-2 checkpoint back.
  ASSERT_EQ(run(kTrain + "--stop-after 2 -o " + run_dir).code, 0);
  fs::copy_file(run_dir + "/checkpoint.safetensors", dir + "/ckpt2.safetensors");
  auto r = run(kTrain + "--stop-after 4 --resume -o " + run_dir);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(train_scalars(read_events(run_dir)).rbegin()->first, 3);
  fs::copy_file(dir + "/ckpt2.safetensors", run_dir + "/checkpoint.safetensors", fs::copy_options::overwrite_existing);
  // A torn record at the end of the newest file, as a kill in the middle of a write leaves it.
  for (auto& f : events_files(run_dir))
    std::ofstream(f, std::ios::app | std::ios::binary) << std::string("\x20\0\0\0\0\0\0", 7);

  r = run(kTrain + "--resume -o " + run_dir);
  ASSERT_EQ(r.code, 0) << r.out;
  auto scalars = train_scalars(read_events(run_dir));  // the reader also proves no torn record is left
  std::set<int64_t> steps;
  for (auto& [s, v] : scalars) steps.insert(s);
  EXPECT_EQ(steps, (std::set<int64_t>{0, 1, 2, 3, 4, 5}));
  expect_events_match_metrics(run_dir);

  // An uninterrupted run logs the same values (the resumed steps are the same steps).
  ASSERT_EQ(run(kTrain + "-o " + dir + "/straight").code, 0);
  auto straight = train_scalars(read_events(dir + "/straight"));
  ASSERT_EQ(straight.size(), scalars.size());
  for (auto& [s, v] : straight) {
    const double a = v["train/loss"], b = scalars[s]["train/loss"];
    EXPECT_NEAR(a, b, 1e-5 * std::abs(a)) << "step " << s;
  }
}

TEST(Version, PrintsBuildAndRuntimeAndResultsRecordIt) {
  auto r = run("--version");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "hybrid-distill " HD_VERSION)) << r.out;
  EXPECT_TRUE(contains(r.out, "commit ")) << r.out;
  EXPECT_TRUE(contains(r.out, "LibTorch ")) << r.out;
  EXPECT_TRUE(contains(r.out, "devices: cpu")) << r.out;

  auto dir = scratch("ecosystem", "Version");
  r = run(kTrainBase + "--max-steps 2 --no-tensorboard -o " + dir + "/run");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = read_json(dir + "/run/result.json");
  ASSERT_TRUE(j.contains("build")) << j.dump();
  const std::string version = run("--version").out;
  for (const char* k : {"version", "commit", "libtorch", "devices"}) {
    ASSERT_TRUE(j["build"].contains(k)) << k;
    EXPECT_TRUE(contains(version, j["build"][k].get<std::string>())) << k << " in\n" << version;
  }
  EXPECT_EQ(j["version"], HD_VERSION);
}

TEST(WebDataset, TrainingFromShardsMatchesTrainingFromTheirSource) {
  auto dir = scratch("ecosystem", "TrainingFromShards");
  auto r = run("make-shards --data fashion-mnist --split test --per-shard 2500 -o " + dir + "/shards");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string spec = "wds:" + dir + "/shards/test-{000000..000003}.tar";
  EXPECT_TRUE(contains(r.out, spec)) << r.out;
  EXPECT_EQ(slurp(dir + "/shards/classes.txt").substr(0, 12), "T-shirt/top\n");

  // The same images under the same indices and, with #buffer=0, in the same order: the same
  // batches and augmentations, so the same losses (up to the float rounding of turning the
  // decoded gray PNG's RGB back into one channel) and the same accuracy.
  const std::string args = "train --precision fp32 -a vit_mini_patch7_28 -b 16 --max-steps 5 --log-every 1 --split test --eval-limit 64 "
                           "--drop-path 0 -t 1 -q --no-tensorboard ";
  r = run(args + "--data fashion-mnist -o " + dir + "/idx");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run(args + "--data '" + spec + "#buffer=0' -o " + dir + "/wds");
  ASSERT_EQ(r.code, 0) << r.out;
  auto a = read_metrics(dir + "/idx"), b = read_metrics(dir + "/wds");
  ASSERT_EQ(a.size(), 5u);
  ASSERT_EQ(b.size(), 5u);
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = a[i]["loss"], y = b[i]["loss"];
    EXPECT_NEAR(x, y, 1e-4 * std::abs(x)) << "step " << i;
  }
  EXPECT_NEAR(read_json(dir + "/idx/result.json")["top1"].get<double>(),
              read_json(dir + "/wds/result.json")["top1"].get<double>(), 1.0 / 64 + 1e-9);

  // The shard-wise order (the default buffer) trains as well; a bad shard stops the run naming
  // it unless --skip-bad.
  r = run(args + "--data '" + spec + "' -o " + dir + "/buffered");
  ASSERT_EQ(r.code, 0) << r.out;
  std::ofstream(dir + "/shards/test-000002.tar", std::ios::in | std::ios::out | std::ios::binary).write("junk", 4);
  r = run(args + "--data '" + spec + "' -o " + dir + "/bad");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, dir + "/shards/test-000002.tar: not a tar archive")) << r.out;
  r = run(args + "--skip-bad --data '" + spec + "' -o " + dir + "/skipped");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "damaged end of 1 shard(s)")) << r.out;
}
