#include "adaptlink/exec/profile.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>
#include <tuple>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/partition/profile.hpp"
#include "adaptlink/partition/testbed.hpp"

namespace adaptlink::exec {
namespace {

using models::NodeKind;

double median(std::vector<double> v) {
  ADAPTLINK_CHECK(!v.empty());
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// Evicts this node's weights from the CPU caches before a timed run: in a pipeline a stage streams through
// all of its layers, so a layer's weights are never cache-hot the way back-to-back repeats of one node would make
// them (decoder layers of small models fit in a server's L3 and decode steps then run several times faster).
size_t eviction_bytes() {
  const long l3 = ::sysconf(_SC_LEVEL3_CACHE_SIZE);
  const size_t known = l3 > 0 ? static_cast<size_t>(l3) : size_t{64} << 20;
  return std::clamp(known * 4, size_t{16} << 20, size_t{512} << 20);  // several times the last-level cache
}

void evict_caches() {
  static std::vector<unsigned char> buffer(eviction_bytes());
  static unsigned char value = 0;
  ++value;
  std::fill(buffer.begin(), buffer.end(), value);
}

// One timed Stage::forward (after evicting the caches); the output goes to `out`.
Expected<double> timed(Stage& stage, const StepInput& step, const Activation& input, Activation* out) {
  evict_caches();
  const auto start = std::chrono::steady_clock::now();
  auto result = stage.forward(step, input);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (!result) return result.error();
  if (out != nullptr) *out = std::move(result).value();
  return ms;
}

at::Tensor ids_tensor(const std::vector<int64_t>& ids) {
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong));
}

std::string hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "this machine";
  return name;
}

std::string describe(const MeasuredProfile& p) {
  return fmt::format("measured by adaptlink-run profile on {} ({} threads, {}, median of {} after a warm-up) for {} "
                     "with {} image(s), {} prompt tokens; decode fitted over cache lengths up to {}",
                     hostname(), p.threads, p.dtype, p.repeats, p.model_dir.string(), p.shape.images,
                     p.shape.prompt_tokens, p.graph.max_context(p.shape));
}

}  // namespace

partition::NodeTimes MeasuredProfile::times() const {
  partition::NodeTimes t;
  for (const auto& n : nodes) {
    t.prefill_ms.push_back(n.prefill_ms);
    t.decode_ms_at_zero.push_back(n.decode_ms_at_zero);
    t.decode_ms_per_token.push_back(n.decode_ms_per_token);
  }
  if (!batch_sizes.empty()) {
    t.batch_sizes = batch_sizes;
    for (const auto& n : nodes) {
      t.decode_batch_ms_at_zero.push_back(n.decode_batch_ms_at_zero.empty()
                                              ? std::vector<double>(batch_sizes.size(), 0.0)
                                              : n.decode_batch_ms_at_zero);
    }
  }
  return t;
}

std::pair<double, double> fit_decode(const std::vector<std::pair<double, double>>& samples) {
  if (samples.empty()) return {0.0, 0.0};
  const double n = static_cast<double>(samples.size());
  double sp = 0, st = 0;
  for (const auto& [p, t] : samples) {
    sp += p;
    st += t;
  }
  const double mp = sp / n, mt = st / n;
  double cov = 0, var = 0;
  for (const auto& [p, t] : samples) {
    cov += (p - mp) * (t - mt);
    var += (p - mp) * (p - mp);
  }
  double slope = var > 0 ? cov / var : 0.0;
  double zero = mt - slope * mp;
  if (slope < 0) {
    slope = 0;
    zero = mt;
  }
  if (zero < 0) {
    // Through the origin: minimises sum (t - b p)^2.
    double pt = 0, pp = 0;
    for (const auto& [p, t] : samples) {
      pt += p * t;
      pp += p * p;
    }
    zero = 0;
    slope = pp > 0 ? std::max(0.0, pt / pp) : 0.0;
  }
  return {std::max(0.0, zero), slope};
}

Expected<MeasuredProfile> measure_profile(const std::filesystem::path& model_dir, const ProfileOptions& options) {
  c10::AutoGradMode no_grad(false);
  if (options.repeats < 1) return make_error("repeats must be >= 1 (got {})", options.repeats);
  const auto& shape = options.shape;
  if (shape.images < 0 || shape.prompt_tokens < 0 || shape.output_tokens < 0) {
    return make_error("the request shape must not be negative (images {}, prompt tokens {}, output tokens {})",
                      shape.images, shape.prompt_tokens, shape.output_tokens);
  }
  if (options.exec.device.type() != c10::DeviceType::CPU) return make_error("profiling runs on the CPU only");
  for (size_t k = 0; k < options.batch_sizes.size(); ++k) {
    if (options.batch_sizes[k] < 2 || options.batch_sizes[k] > 4096 ||
        (k > 0 && options.batch_sizes[k] <= options.batch_sizes[k - 1])) {
      return make_error("batch sizes must be ascending integers from 2 to 4096");
    }
  }
  auto checkpoint = Checkpoint::open(model_dir);
  if (!checkpoint) return checkpoint.error();
  const auto& config = checkpoint->config();
  MeasuredProfile result{models::LayerGraph::build(
                             config, options.exec.dtype == at::kFloat ? models::Dtype::fp32 : models::Dtype::bf16),
                         {}, 0, 0, {}, {}, {}, {}};
  const auto& graph = result.graph;
  result.shape = shape;
  result.repeats = options.repeats;
  result.threads = at::get_num_threads();
  result.dtype = options.exec.dtype == at::kFloat ? "fp32" : "bf16";
  result.model_dir = model_dir;
  result.batch_sizes = options.batch_sizes;

  // Token ids: one text token, the image slots, the rest of the prompt (where LLaVA's template puts <image>).
  const int image_tokens = shape.images * config.image_tokens_per_image();
  const int prefill_tokens = shape.prompt_tokens + image_tokens;
  if (prefill_tokens == 0) return make_error("nothing to measure: no prompt tokens and no images");
  const int64_t vocab = config.text.vocab_size;
  std::mt19937_64 rng(1);
  auto text_token = [&] {
    int64_t id = 0;
    do {
      id = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
    } while (id == config.image_token_index);
    return id;
  };
  std::vector<int64_t> prompt;
  for (int k = 0; k < prefill_tokens; ++k) {
    const bool image_slot = shape.prompt_tokens > 0 ? (k >= 1 && k <= image_tokens) : k < image_tokens;
    prompt.push_back(image_slot ? config.image_token_index : text_token());
  }
  const at::Tensor prompt_ids = ids_tensor(prompt);
  const at::Tensor one_token = ids_tensor({text_token()});

  const int context = graph.max_context(shape);
  const std::vector<int> decode_pasts = {0, context / 2, context};
  int64_t request = 1;

  // What flows from node to node: the prefill output and the decode-step output.
  Activation prefill_in;
  if (shape.images > 0) {
    const auto& v = config.vision;
    prefill_in = {ActivationKind::pixels,
                  at::randn({static_cast<int64_t>(shape.images) * config.vision_crops_per_image(), v.num_channels,
                             v.image_size, v.image_size},
                            at::TensorOptions().dtype(at::kFloat))};
  }
  Activation decode_in;

  for (int i = 0; i < graph.size(); ++i) {
    const auto& node = graph.node(i);
    NodeProfile np;
    np.name = node.name;
    if (node.is_vision() && shape.images == 0) {
      // No image: the vision tower does not run.
      result.nodes.push_back(np);
      if (options.progress) options.progress(np, i, graph.size());
      continue;
    }
    auto loaded = Stage::load(*checkpoint, graph, i, i, options.exec);
    if (!loaded) return loaded.error();
    Stage& stage = **loaded;

    // Prefill: warm-up, then the repeats; the last output feeds the next node.
    StepInput step;
    step.input_ids = prompt_ids;
    step.prefill = true;
    Activation prefill_out;
    std::vector<double> ms;
    for (int r = 0; r <= options.repeats; ++r) {
      step.request = request++;
      auto t = timed(stage, step, prefill_in, &prefill_out);
      if (!t) return t.error();
      stage.drop_request(step.request);
      if (r > 0) ms.push_back(*t);
    }
    np.prefill_ms = median(ms);

    // Decode steps (text nodes).
    if (!node.is_vision()) {
      const bool reads_cache = node.kind == NodeKind::decoder_layer;
      Activation step_input = node.kind == NodeKind::text_embed ? Activation{} : decode_in;
      Activation step_out;
      for (int past : reads_cache ? decode_pasts : std::vector<int>{0}) {
        const int64_t id = request++;
        if (past > 0) {
          // Fill the cache with `past` tokens: this layer's prefill input, repeated to length `past`.
          const at::Tensor& x = prefill_in.tensor;  // [1, T, hidden]
          const at::Tensor index = at::arange(past, at::TensorOptions().dtype(at::kLong)).remainder(x.size(1));
          StepInput fill;
          fill.request = id;
          fill.prefill = true;
          fill.input_ids = ids_tensor(std::vector<int64_t>(static_cast<size_t>(past), one_token.item<int64_t>()));
          auto filled = stage.forward(fill, Activation{ActivationKind::text_hidden, x.index_select(1, index)});
          if (!filled) return filled.error();
        }
        StepInput dec;
        dec.request = id;
        dec.prefill = false;
        dec.input_ids = one_token;
        std::vector<double> step_ms;
        for (int r = 0; r <= options.repeats; ++r) {
          auto t = timed(stage, dec, step_input, &step_out);
          if (!t) return t.error();
          if (r > 0) step_ms.push_back(*t);
        }
        stage.drop_request(id);
        // Step r (1-based among the timed ones) saw past + r cached tokens; the median one's count stands for all.
        np.decode_samples.emplace_back(past + 1 + (options.repeats - 1) / 2.0, median(step_ms));
      }
      if (reads_cache) {
        std::tie(np.decode_ms_at_zero, np.decode_ms_per_token) = fit_decode(np.decode_samples);
      } else {
        np.decode_ms_at_zero = np.decode_samples.front().second;
        np.decode_ms_per_token = 0;
      }
      // Batches: b requests, one cached token each (the cache a batch member needs), one step together.
      for (int b : options.batch_sizes) {
        const bool cached = node.kind != NodeKind::head;  // text_embed and decoder layers keep a cache per request
        std::vector<StepInput> steps(static_cast<size_t>(b));
        for (auto& s : steps) {
          s.request = request++;
          s.prefill = false;
          s.input_ids = one_token;
          if (!cached) continue;
          StepInput fill;
          fill.request = s.request;
          fill.input_ids = one_token;
          const Activation fill_in = node.kind == NodeKind::text_embed
                                         ? Activation{}
                                         : Activation{ActivationKind::text_hidden, prefill_in.tensor.narrow(1, 0, 1)};
          auto filled = stage.forward(fill, fill_in);
          if (!filled) return filled.error();
        }
        const Activation batch_in = node.kind == NodeKind::text_embed
                                        ? Activation{}
                                        : Activation{ActivationKind::text_hidden, step_input.tensor.expand({b, 1, -1}).contiguous()};
        std::vector<double> batch_ms;
        for (int r = 0; r <= options.repeats; ++r) {
          evict_caches();
          const auto start = std::chrono::steady_clock::now();
          auto out = stage.forward_batch(steps, batch_in);
          const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
          if (!out) return out.error();
          // Member i had 1 + r cached tokens (decoder layers; the others read no cache).
          if (r > 0) batch_ms.push_back(ms - (reads_cache ? np.decode_ms_per_token * b * (1 + r) : 0.0));
        }
        for (const auto& s : steps) stage.drop_request(s.request);
        np.decode_batch_ms_at_zero.push_back(std::max(0.0, median(batch_ms)));
      }
      decode_in = step_out;
    }
    prefill_in = prefill_out;
    result.nodes.push_back(np);
    if (options.progress) options.progress(np, i, graph.size());
  }
  return result;
}

Status check_scenario_model(const models::LayerGraph& checkpoint_graph, const std::filesystem::path& model_dir,
                            const partition::Scenario& scenario) {
  const auto scenario_graph = models::LayerGraph::build(scenario.model.llava, scenario.model.dtype);
  bool same = scenario_graph.size() == checkpoint_graph.size();
  for (int i = 0; same && i < scenario_graph.size(); ++i) {
    same = scenario_graph.node(i).name == checkpoint_graph.node(i).name;
  }
  if (!same) {
    return make_error("scenario '{}' describes another model ({} nodes, {} decoder layers) than {} ({} nodes, {} "
                      "decoder layers): adaptlink-sim needs a scenario with [model] config = \"{}\"",
                      scenario.name, scenario_graph.size(), scenario_graph.num_decoder_layers(), model_dir.string(),
                      checkpoint_graph.size(), checkpoint_graph.num_decoder_layers(),
                      (model_dir / "config.json").string());
  }
  return Ok{};
}

nlohmann::json testbed_profile_json(const MeasuredProfile& profile, const partition::Scenario& scenario) {
  const auto times = profile.times();
  std::vector<partition::ProfileEntry> entries;
  std::string factors;
  for (int d = 0; d < static_cast<int>(scenario.devices.size()); ++d) {
    const double f = partition::testbed_slowdown(scenario, d);
    entries.push_back({scenario.devices[static_cast<size_t>(d)].name, "", partition::scaled(times, f)});
    factors += fmt::format("{}{} x{:.4g}", factors.empty() ? "" : ", ", scenario.devices[static_cast<size_t>(d)].name, f);
  }
  partition::ProfileMeta meta;
  meta.shape = profile.shape;
  meta.comment = fmt::format(
      "{}. Testbed emulation of scenario '{}', not the real devices: each device's times are the measured times x "
      "testbed_slowdown = (largest tflops in the scenario) / (its tflops): {}",
      describe(profile), scenario.name, factors);
  return partition::profile_to_json(profile.graph, entries, meta);
}

nlohmann::json device_profile_json(const MeasuredProfile& profile, const std::string& device) {
  partition::ProfileMeta meta;
  meta.shape = profile.shape;
  meta.comment = describe(profile) + fmt::format(". Times of device '{}' as measured, unscaled", device);
  return partition::profile_to_json(profile.graph, {{device, "", profile.times()}}, meta);
}

}  // namespace adaptlink::exec
