#include "adaptlink/exec/generate.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <deque>
#include <span>
#include <fstream>
#include <nlohmann/json.hpp>

namespace adaptlink::exec {
namespace {

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::vector<int64_t> read_eos_ids(const std::filesystem::path& dir, const models::LlavaConfig& config) {
  std::ifstream in(dir / "generation_config.json");
  if (in) {
    try {
      auto j = nlohmann::json::parse(in);
      if (j.contains("eos_token_id")) {
        const auto& e = j["eos_token_id"];
        if (e.is_number_integer()) return {e.get<int64_t>()};
        if (e.is_array()) {
          std::vector<int64_t> ids;
          for (const auto& x : e) {
            if (x.is_number_integer()) ids.push_back(x.get<int64_t>());
          }
          return ids;
        }
      }
    } catch (const nlohmann::json::exception&) {
      // fall through to the config's EOS
    }
  }
  if (config.text.eos_token_id >= 0) return {config.text.eos_token_id};
  return {};
}

std::vector<std::pair<int, int>> split_even(const models::LayerGraph& graph, int count) {
  const int n = graph.size();
  count = std::clamp(count, 1, n);
  double total = 0;
  for (const auto& node : graph.nodes()) total += node.weight_bytes;
  std::vector<std::pair<int, int>> out;
  int start = 0;
  double acc = 0;
  for (int i = 0; i < n; ++i) {
    acc += graph.node(i).weight_bytes;
    const int stages_left = count - static_cast<int>(out.size());
    const int nodes_left = n - i - 1;
    const bool cut = stages_left > 1 && (acc >= total * (static_cast<double>(out.size()) + 1) / count || nodes_left < stages_left);
    if (cut && nodes_left >= stages_left - 1) {
      out.emplace_back(start, i);
      start = i + 1;
    }
  }
  out.emplace_back(start, n - 1);
  return out;
}

Expected<std::unique_ptr<LlavaRunner>> LlavaRunner::load(const std::filesystem::path& dir, const ExecOptions& options,
                                                         std::vector<std::pair<int, int>> ranges,
                                                         NextCheckpoints next) {
  auto checkpoint = Checkpoint::open(dir, next);
  if (!checkpoint) return checkpoint.error();
  auto graph = models::LayerGraph::build(checkpoint->config(),
                                         options.dtype == at::kFloat ? models::Dtype::fp32 : models::Dtype::bf16);
  std::unique_ptr<LlavaRunner> runner(new LlavaRunner(std::move(checkpoint).value(), std::move(graph)));
  if (ranges.empty()) ranges.emplace_back(0, runner->graph_.size() - 1);
  int expect = 0;
  for (const auto& [first, last] : ranges) {
    if (first != expect || last < first || last >= runner->graph_.size()) {
      return make_error("stage ranges must cover nodes 0..{} in order without gaps (got [{}, {}])",
                        runner->graph_.size() - 1, first, last);
    }
    expect = last + 1;
  }
  if (expect != runner->graph_.size()) {
    return make_error("stage ranges end at node {}, the model has {} nodes", expect - 1, runner->graph_.size());
  }
  for (const auto& [first, last] : ranges) {
    auto stage = Stage::load(runner->checkpoint_, runner->graph_, first, last, options);
    if (!stage) return stage.error();
    runner->stages_.push_back(std::move(stage).value());
  }
  runner->eos_ids_ = read_eos_ids(dir, runner->checkpoint_.config());
  auto processor = checkpoint_image_processor(dir, runner->checkpoint_.config());
  if (!processor) return processor.error();
  runner->image_processor_ = *processor;
  return runner;
}

Expected<ImageProcessorConfig> checkpoint_image_processor(const std::filesystem::path& dir,
                                                          const models::LlavaConfig& config) {
  const auto pre = dir / "preprocessor_config.json";
  if (std::filesystem::exists(pre)) return load_image_processor_config(pre);
  ImageProcessorConfig processor;
  const int size = config.vision.image_size;
  processor.shortest_edge = size;
  processor.crop_height = processor.crop_width = size;
  return processor;
}

Expected<at::Tensor> pixel_values_for_image(const std::filesystem::path& image, const ImageProcessorConfig& processor) {
  auto rgb = decode_image(image);
  if (!rgb) return rgb.error();
  auto pv = preprocess_image(*rgb, processor);
  if (!pv) return Error{pv.error().message, image.string(), 0, 0};
  return at::from_blob(pv->data.data(), {1, pv->channels, pv->height, pv->width}, at::TensorOptions().dtype(at::kFloat))
      .clone();
}

Expected<ImagePixels> image_pixels_for(const std::filesystem::path& image, const ImageProcessorConfig& processor,
                                       const models::LlavaConfig& config) {
  if (config.model_type != "llava_next") {
    auto pv = pixel_values_for_image(image, processor);
    if (!pv) return pv.error();
    return ImagePixels{*pv, {}};
  }
  auto rgb = decode_image(image);
  if (!rgb) return rgb.error();
  auto pv = preprocess_anyres(*rgb, processor, config.image_grid_pinpoints);
  if (!pv) return Error{pv.error().message, image.string(), 0, 0};
  return ImagePixels{
      at::from_blob(pv->data.data(), {pv->crops, 3, pv->height, pv->width}, at::TensorOptions().dtype(at::kFloat))
          .clone(),
      {pv->image_size}};
}

Expected<at::Tensor> LlavaRunner::pixel_values_for_image(const std::filesystem::path& image) const {
  return exec::pixel_values_for_image(image, image_processor_);
}

Expected<GenerateResult> LlavaRunner::generate(const std::vector<int64_t>& input_ids, const at::Tensor& pixel_values,
                                               const GenerateOptions& options) {
  auto results = generate_batch({GenerateRequest{input_ids, pixel_values}}, options, 1);
  if (!results) return results.error();
  return std::move(results->front());
}

Expected<std::vector<GenerateResult>> LlavaRunner::generate_batch(const std::vector<GenerateRequest>& requests,
                                                                  const GenerateOptions& options, int max_batch) {
  c10::AutoGradMode no_grad(false);
  for (const auto& r : requests) {
    if (r.input_ids.empty()) return make_error("empty prompt (no input ids)");
  }
  if (options.max_new_tokens < 0) return make_error("max_new_tokens must be >= 0");
  if (max_batch < 1) return make_error("max_batch must be >= 1");
  const auto& eos = options.eos_ids ? *options.eos_ids : eos_ids_;
  const size_t n = requests.size();
  std::vector<int64_t> ids(n);
  for (auto& id : ids) id = next_request_++;
  std::vector<GenerateResult> results(n);
  auto drop = [&] {
    for (auto& stage : stages_) {
      for (int64_t id : ids) stage->drop_request(id);
    }
  };
  // One step (a prefill) or a batch of decode steps through every stage; on an error every request's state goes.
  auto chain = [&](std::span<const StepInput> steps, Activation act) -> Expected<Activation> {
    for (auto& stage : stages_) {
      auto out = stage->forward_batch(steps, act);
      if (!out) {
        drop();
        return out.error();
      }
      act = std::move(out).value();
    }
    return act;
  };

  // Prefills, one request at a time.
  std::vector<at::Tensor> last(n);  // each request's logits row for its next token
  for (size_t i = 0; i < n; ++i) {
    const auto start = std::chrono::steady_clock::now();
    StepInput step;
    step.request = ids[i];
    step.input_ids = at::tensor(requests[i].input_ids, at::TensorOptions().dtype(at::kLong));
    step.all_logits = options.keep_prefill_logits;
    step.image_sizes = requests[i].image_sizes;
    Activation input;
    if (requests[i].pixel_values.defined()) input = {ActivationKind::pixels, requests[i].pixel_values.to(at::kFloat)};
    auto out = chain(std::span<const StepInput>(&step, 1), input);
    if (!out) return out.error();
    const Activation& act = *out;
    if (act.kind != ActivationKind::logits) {
      drop();
      return make_error("the last stage did not produce logits");
    }
    const at::Tensor& logits = act.tensor;  // [1, T or 1, V]
    if (options.keep_prefill_logits) results[i].prefill_logits = logits[0].to(at::kCPU).contiguous();
    results[i].prompt_tokens = static_cast<int>(requests[i].input_ids.size());
    results[i].prefill_ms = ms_since(start);
    last[i] = logits[0][logits.size(1) - 1];
  }

  // Decode: a request takes its next token from `last`; it goes on (waits for a batch) unless that was its EOS or
  // its max_new_tokens-th.
  const auto start = std::chrono::steady_clock::now();
  std::deque<size_t> waiting;
  auto take_token = [&](size_t i) {
    const int64_t next = last[i].argmax().item<int64_t>();
    results[i].generated.push_back(next);
    const bool stop = std::find(eos.begin(), eos.end(), next) != eos.end() ||
                      static_cast<int>(results[i].generated.size()) >= options.max_new_tokens;
    if (stop) {
      results[i].decode_ms = ms_since(start);
    } else {
      waiting.push_back(i);
    }
  };
  for (size_t i = 0; i < n; ++i) {
    if (options.max_new_tokens > 0) take_token(i);
  }
  std::vector<StepInput> steps;
  std::vector<size_t> members;
  while (!waiting.empty()) {
    steps.clear();
    members.clear();
    while (!waiting.empty() && static_cast<int>(members.size()) < max_batch) {
      const size_t i = waiting.front();
      waiting.pop_front();
      StepInput step;
      step.request = ids[i];
      step.input_ids = at::tensor(std::vector<int64_t>{results[i].generated.back()}, at::TensorOptions().dtype(at::kLong));
      step.prefill = false;
      steps.push_back(std::move(step));
      members.push_back(i);
    }
    auto out = chain(steps, Activation{});
    if (!out) return out.error();
    for (size_t b = 0; b < members.size(); ++b) {
      last[members[b]] = out->tensor[static_cast<int64_t>(b)][out->tensor.size(1) - 1];
      take_token(members[b]);
    }
  }
  drop();
  return results;
}

}  // namespace adaptlink::exec
