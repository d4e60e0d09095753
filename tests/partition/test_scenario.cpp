// Scenario files: bundled scenarios parse, catalogue values and defaults apply, to_toml round-trips,
// and every kind of bad input is reported with its exact file, line and column.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::partition {
namespace {

namespace fs = std::filesystem;

const fs::path kSource = ADAPTLINK_SOURCE_DIR;
const fs::path kScenarios = kSource / "scenarios";
const fs::path kBad = kSource / "tests" / "data" / "bad-scenarios";

std::vector<fs::path> files_in(const fs::path& dir, std::string_view exclude = "") {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".toml" && entry.path().filename() != exclude) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<fs::path> bundled_scenarios() { return files_in(kScenarios, "devices.toml"); }

// A fresh folder under the build tree for files written at test time.
fs::path scratch_dir(const std::string& name) {
  fs::path dir = fs::path(ADAPTLINK_BINARY_DIR) / "test-scratch" / "scenario" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_file(const fs::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
}

Scenario parse_ok(std::string_view text, const fs::path& source = "inline.toml") {
  auto s = parse_scenario(text, source);
  EXPECT_TRUE(s.has_value()) << (s ? "" : s.error().to_string());
  if (!s) return Scenario{};
  return std::move(s).value();
}

Error parse_error(std::string_view text, const fs::path& source = "inline.toml") {
  auto s = parse_scenario(text, source);
  EXPECT_FALSE(s.has_value()) << "parsed, but should not have:\n" << text;
  if (s) return Error{};
  return s.error();
}

constexpr std::string_view kMinimal = R"(
[model]
preset = "llava-1.5-7b"

[[devices]]
name = "agx"
kind = "jetson-agx-orin-64gb"
)";

// ---------------------------------------------------------------------------------------------
// Field-by-field equality (the structs have no operator==; LlavaConfig is compared by its shape).

void expect_same(const Scenario& a, const Scenario& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.model.preset, b.model.preset);
  EXPECT_EQ(a.model.config, b.model.config);
  EXPECT_EQ(a.model.dtype, b.model.dtype);
  EXPECT_EQ(a.model.llava.model_type, b.model.llava.model_type);
  EXPECT_EQ(a.model.llava.text.num_hidden_layers, b.model.llava.text.num_hidden_layers);
  EXPECT_EQ(a.model.llava.text.hidden_size, b.model.llava.text.hidden_size);
  EXPECT_EQ(a.model.llava.vision.num_hidden_layers, b.model.llava.vision.num_hidden_layers);
  ASSERT_EQ(a.devices.size(), b.devices.size());
  for (size_t i = 0; i < a.devices.size(); ++i) {
    SCOPED_TRACE("device " + a.devices[i].name);
    EXPECT_EQ(a.devices[i].name, b.devices[i].name);
    EXPECT_EQ(a.devices[i].kind, b.devices[i].kind);
    EXPECT_EQ(a.devices[i].tflops, b.devices[i].tflops);
    EXPECT_EQ(a.devices[i].mem_bytes, b.devices[i].mem_bytes);
    EXPECT_EQ(a.devices[i].mem_bw_gbs, b.devices[i].mem_bw_gbs);
    EXPECT_EQ(a.devices[i].role, b.devices[i].role);
    EXPECT_EQ(a.devices[i].endpoint, b.devices[i].endpoint);
    EXPECT_EQ(a.devices[i].public_key, b.devices[i].public_key);
    EXPECT_EQ(a.devices[i].dropout_rate, b.devices[i].dropout_rate);
  }
  EXPECT_EQ(a.network.topology, b.network.topology);
  EXPECT_EQ(a.network.default_link.bandwidth_mbps, b.network.default_link.bandwidth_mbps);
  EXPECT_EQ(a.network.default_link.latency_ms, b.network.default_link.latency_ms);
  auto same_links = [](const auto& x, const auto& y) {
    ASSERT_EQ(x.size(), y.size());
    for (auto ix = x.begin(), iy = y.begin(); ix != x.end(); ++ix, ++iy) {
      EXPECT_EQ(ix->first, iy->first);
      EXPECT_EQ(ix->second.bandwidth_mbps, iy->second.bandwidth_mbps);
      EXPECT_EQ(ix->second.latency_ms, iy->second.latency_ms);
    }
  };
  same_links(a.network.access, b.network.access);
  same_links(a.network.direct, b.network.direct);
  EXPECT_EQ(a.workload.requests, b.workload.requests);
  EXPECT_EQ(a.workload.arrival, b.workload.arrival);
  EXPECT_EQ(a.workload.in_flight, b.workload.in_flight);
  EXPECT_EQ(a.workload.rate_per_s, b.workload.rate_per_s);
  EXPECT_EQ(a.workload.shape.images, b.workload.shape.images);
  EXPECT_EQ(a.workload.shape.prompt_tokens, b.workload.shape.prompt_tokens);
  EXPECT_EQ(a.workload.shape.output_tokens, b.workload.shape.output_tokens);
  EXPECT_EQ(a.planner.name, b.planner.name);
  EXPECT_EQ(a.planner.objective, b.planner.objective);
  EXPECT_EQ(a.planner.backups, b.planner.backups);
  EXPECT_EQ(a.planner.schedule, b.planner.schedule);
  EXPECT_EQ(a.planner.replicas, b.planner.replicas);
  ASSERT_EQ(a.faults.size(), b.faults.size());
  for (size_t i = 0; i < a.faults.size(); ++i) {
    EXPECT_EQ(a.faults[i].at_s, b.faults[i].at_s);
    EXPECT_EQ(a.faults[i].device, b.faults[i].device);
    EXPECT_EQ(a.faults[i].kind, b.faults[i].kind);
    EXPECT_EQ(a.faults[i].factor, b.faults[i].factor);
    EXPECT_EQ(a.faults[i].bandwidth_mbps, b.faults[i].bandwidth_mbps);
  }
}

void expect_round_trip(const Scenario& s) {
  std::string text = to_toml(s);
  auto again = parse_scenario(text, "resolved.toml");
  ASSERT_TRUE(again.has_value()) << again.error().to_string() << "\n" << text;
  expect_same(s, *again);
  // A fixed point, but for the header comment naming the source file.
  auto body = [](const std::string& t) { return t.substr(t.find('\n')); };
  EXPECT_EQ(body(to_toml(*again)), body(text));
}

// ---------------------------------------------------------------------------------------------
// Catalogue

TEST(ScenarioCatalogue, BuiltinHasEveryReferenceKind) {
  const auto& catalogue = builtin_catalogue();
  for (std::string_view kind :
       {"jetson-agx-orin-64gb", "jetson-agx-orin-32gb", "jetson-orin-nx-16gb", "jetson-orin-nano-8gb",
        "jetson-xavier-nx-8gb", "raspberry-pi-5-8gb", "snapdragon-8-gen3-phone", "laptop-rtx4060", "generic-4gb"}) {
    auto it = std::find_if(catalogue.begin(), catalogue.end(), [&](const auto& e) { return e.kind == kind; });
    ASSERT_NE(it, catalogue.end()) << kind;
    EXPECT_GT(it->tflops, 0);
    EXPECT_GT(it->mem_gb, 0);
    EXPECT_GT(it->mem_bw_gbs, 0);
    EXPECT_FALSE(it->description.empty());
  }
  auto agx =
      std::find_if(catalogue.begin(), catalogue.end(), [](const auto& e) { return e.kind == "jetson-agx-orin-64gb"; });
  EXPECT_DOUBLE_EQ(agx->tflops, 0.45 * 42.5);  // effective = 0.45 x peak dense fp16
  EXPECT_EQ(agx->mem_gb, 60);
  EXPECT_EQ(agx->mem_bw_gbs, 204.8);
}

TEST(ScenarioCatalogue, FileMatchesBuiltin) {
  auto loaded = load_catalogue(kScenarios / "devices.toml");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().to_string();
  const auto& builtin = builtin_catalogue();
  ASSERT_EQ(loaded->size(), builtin.size());
  for (size_t i = 0; i < builtin.size(); ++i) {
    EXPECT_EQ((*loaded)[i].kind, builtin[i].kind);
    EXPECT_EQ((*loaded)[i].tflops, builtin[i].tflops);
    EXPECT_EQ((*loaded)[i].mem_gb, builtin[i].mem_gb);
    EXPECT_EQ((*loaded)[i].mem_bw_gbs, builtin[i].mem_bw_gbs);
  }
}

TEST(ScenarioCatalogue, BadCatalogueIsLocated) {
  fs::path dir = scratch_dir("catalogue");
  write_file(dir / "bad.toml", "[[device]]\nkind = \"x\"\ntflops = 1\nmem_gb = -2\nmem_bw_gbs = 3\n");
  auto loaded = load_catalogue(dir / "bad.toml");
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().file, (dir / "bad.toml").string());
  EXPECT_EQ(loaded.error().line, 4);
  EXPECT_EQ(loaded.error().column, 10);
  EXPECT_NE(loaded.error().message.find("device[0].mem_gb: must be > 0, got -2"), std::string::npos);

  write_file(dir / "dup.toml",
             "[[device]]\nkind = \"x\"\ntflops = 1\nmem_gb = 2\nmem_bw_gbs = 3\n"
             "[[device]]\nkind = \"x\"\ntflops = 1\nmem_gb = 2\nmem_bw_gbs = 3\nspeed = 1\n");
  loaded = load_catalogue(dir / "dup.toml");
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().line, 11);  // unknown keys are checked first
  EXPECT_NE(loaded.error().message.find("device[1].speed: unknown key"), std::string::npos);

  loaded = load_catalogue(dir / "missing.toml");
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().file, (dir / "missing.toml").string());
  EXPECT_NE(loaded.error().message.find("cannot read"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Bundled scenarios

TEST(ScenarioFile, EveryBundledScenarioParses) {
  auto files = bundled_scenarios();
  EXPECT_GE(files.size(), 6u);
  for (const auto& file : files) {
    SCOPED_TRACE(file.string());
    auto s = load_scenario(file);
    ASSERT_TRUE(s.has_value()) << s.error().to_string();
    EXPECT_EQ(s->name, file.stem().string());  // bundled files name themselves after the file
    EXPECT_EQ(s->source, file);
    EXPECT_FALSE(s->devices.empty());
    for (const auto& d : s->devices) {
      EXPECT_FALSE(d.kind.empty()) << d.name;  // bundled scenarios use the catalogue
      EXPECT_GT(d.tflops, 0);
      EXPECT_GT(d.mem_bytes, 0);
      EXPECT_GT(d.mem_bw_gbs, 0);
    }
    expect_round_trip(*s);
  }
}

TEST(ScenarioFile, JetsonQuartet) {
  auto s = load_scenario(kScenarios / "jetson-quartet.toml");
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->model.preset, "llava-1.5-7b");
  EXPECT_EQ(s->model.dtype, models::Dtype::fp16);
  EXPECT_EQ(s->model.llava.text.num_hidden_layers, 32);
  ASSERT_EQ(s->devices.size(), 4u);
  EXPECT_EQ(s->devices[0].name, "agx");
  EXPECT_EQ(s->devices[0].kind, "jetson-agx-orin-64gb");
  EXPECT_DOUBLE_EQ(s->devices[0].tflops, 19.125);
  EXPECT_EQ(s->devices[0].mem_bytes, 60e9);
  EXPECT_EQ(s->devices[0].mem_bw_gbs, 204.8);
  EXPECT_EQ(s->devices[2].mem_bytes, 6.5e9);
  EXPECT_EQ(s->device_index("xavier"), 3);
  EXPECT_EQ(s->device_index("nope"), -1);
  EXPECT_EQ(s->network.topology, Topology::star);
  EXPECT_EQ(s->network.access_link(0).bandwidth_mbps, 400);
  EXPECT_EQ(s->network.access_link(0).latency_ms, 3.0);
  EXPECT_EQ(s->network.access_link(3).bandwidth_mbps, 200);
  EXPECT_EQ(s->network.access_link(3).latency_ms, 4.0);
  EXPECT_FALSE(s->network.direct_link(0, 1).has_value());  // star: everything through the AP
  EXPECT_EQ(s->workload.in_flight, 4);
  EXPECT_EQ(s->workload.shape.output_tokens, 128);
  EXPECT_EQ(s->planner.name, "adaptlink");
}

TEST(ScenarioFile, DropoutScenarioHasFaultsAndStandby) {
  auto s = load_scenario(kScenarios / "jetson-quartet-dropout.toml");
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  ASSERT_EQ(s->faults.size(), 2u);
  EXPECT_EQ(s->faults[0].device, "nx");
  EXPECT_EQ(s->faults[0].kind, FaultKind::dropout);
  EXPECT_EQ(s->faults[0].at_s, 20.0);
  EXPECT_EQ(s->faults[1].kind, FaultKind::rejoin);
  EXPECT_EQ(s->devices[s->device_index("spare")].role, Role::standby);
  EXPECT_EQ(s->devices[s->device_index("nx")].dropout_rate, 2.0);
}

TEST(ScenarioFile, MeshLinks) {
  auto s = load_scenario(kScenarios / "gbe-lab.toml");
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->network.topology, Topology::mesh);
  int laptop = s->device_index("laptop"), agx = s->device_index("agx32"), nano = s->device_index("nano");
  auto override_link = s->network.direct_link(laptop, agx);
  ASSERT_TRUE(override_link.has_value());
  EXPECT_EQ(override_link->bandwidth_mbps, 2350);
  EXPECT_EQ(s->network.direct_link(agx, laptop)->bandwidth_mbps, 2350);  // symmetric
  auto default_link = s->network.direct_link(nano, agx);
  ASSERT_TRUE(default_link.has_value());  // mesh: every pair has a link
  EXPECT_EQ(default_link->bandwidth_mbps, 940);
  EXPECT_EQ(default_link->latency_ms, 0.2);
  EXPECT_FALSE(s->network.direct_link(nano, nano).has_value());
  EXPECT_EQ(s->devices[agx].endpoint, "tcp://192.0.2.11:5555");
}

TEST(ScenarioFile, ModelFitsNowhereParses) {
  // Whether the model fits is the planner's question; the file itself is valid.
  auto s = load_scenario(kBad / "model-fits-nowhere.toml");
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->devices.size(), 2u);
  EXPECT_EQ(s->devices[0].mem_bytes, 4e9);
}

// ---------------------------------------------------------------------------------------------
// Defaults, catalogue application and overrides

TEST(ScenarioFile, Defaults) {
  Scenario s = parse_ok(kMinimal, "some/dir/minimal.toml");
  EXPECT_EQ(s.name, "minimal");  // the file stem when `name` is absent
  EXPECT_EQ(s.model.dtype, models::Dtype::fp16);
  EXPECT_EQ(s.devices[0].role, Role::active);
  EXPECT_EQ(s.devices[0].dropout_rate, 0);
  EXPECT_EQ(s.devices[0].endpoint, "");
  EXPECT_EQ(s.network.topology, Topology::star);
  EXPECT_EQ(s.network.default_link.bandwidth_mbps, 400);
  EXPECT_EQ(s.network.default_link.latency_ms, 2.0);
  EXPECT_TRUE(s.network.access.empty());
  EXPECT_TRUE(s.network.direct.empty());
  EXPECT_EQ(s.workload.requests, 100);
  EXPECT_EQ(s.workload.arrival, Arrival::closed);
  EXPECT_EQ(s.workload.in_flight, 4);
  EXPECT_EQ(s.workload.shape.images, 1);
  EXPECT_EQ(s.workload.shape.prompt_tokens, 64);
  EXPECT_EQ(s.workload.shape.output_tokens, 128);
  EXPECT_EQ(s.planner.name, "adaptlink");
  EXPECT_EQ(s.planner.objective, Objective::throughput);
  EXPECT_TRUE(s.planner.backups);
  EXPECT_EQ(s.planner.schedule, Schedule::decode_first);
  EXPECT_TRUE(s.planner.replicas);
  EXPECT_TRUE(s.faults.empty());
  expect_round_trip(s);
}

TEST(ScenarioFile, CatalogueValuesAreOverridable) {
  Scenario s = parse_ok(R"(
[model]
preset = "llava-1.5-7b"
[[devices]]
name = "laptop"
kind = "laptop-rtx4060"
mem_gb = 7          # integers are accepted for floats
[[devices]]
name = "box"
tflops = 12.5
mem_gb = 24.25
mem_bw_gbs = 300
)");
  ASSERT_EQ(s.devices.size(), 2u);
  EXPECT_EQ(s.devices[0].kind, "laptop-rtx4060");
  EXPECT_DOUBLE_EQ(s.devices[0].tflops, 10.35);  // from the catalogue
  EXPECT_EQ(s.devices[0].mem_bytes, 7e9);        // overridden
  EXPECT_EQ(s.devices[0].mem_bw_gbs, 256);       // from the catalogue
  EXPECT_EQ(s.devices[1].kind, "");
  EXPECT_EQ(s.devices[1].tflops, 12.5);
  EXPECT_EQ(s.devices[1].mem_bytes, 24.25e9);
  EXPECT_EQ(s.devices[1].mem_bw_gbs, 300);
}

// ---------------------------------------------------------------------------------------------
// Round trip with every feature in use

TEST(ScenarioFile, RoundTripEverything) {
  fs::path dir = scratch_dir("round-trip");
  fs::create_directories(dir / "llava");
  std::string_view config = models::preset_config_text("llava-1.5-7b");
  ASSERT_FALSE(config.empty());
  write_file(dir / "llava" / "config.json", config);
  write_file(dir / "all.toml", R"(
name = "all \"features\""
[model]
config = "llava/config.json"
dtype = "int4"
[[devices]]
name = "a"
kind = "jetson-orin-nano-8gb"
endpoint = "tcp://127.0.0.1:6000"
public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
dropout_rate = 0.25
[[devices]]
name = "b"
tflops = 0.1
mem_gb = 7.3
mem_bw_gbs = 33.3
role = "standby"
[[devices]]
name = "c"
kind = "raspberry-pi-5-8gb"
mem_gb = 3.1415926
[network]
topology = "mesh"
bandwidth_mbps = 123.456
latency_ms = 0
[[links]]
between = ["c", "a"]
bandwidth_mbps = 50
[[links]]
between = ["b", "c"]
latency_ms = 7
[workload]
requests = 7
arrival = "poisson"
rate_per_s = 0.3
in_flight = 3
images_per_request = 0
prompt_tokens = 5
output_tokens = 9
[planner]
name = "exhaustive"
objective = "latency"
backups = false
schedule = "fifo"
replicas = false
[[faults]]
at_s = 1
device = "a"
kind = "dropout"
signal = "stop"
[[faults]]
at_s = 2.5
device = "a"
kind = "rejoin"
[[faults]]
at_s = 3
device = "c"
kind = "slowdown"
factor = 2.5
[[faults]]
at_s = 4
device = "b"
kind = "link"
bandwidth_mbps = 10
)");
  auto s = load_scenario(dir / "all.toml");
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->name, "all \"features\"");
  EXPECT_TRUE(s->model.preset.empty());
  EXPECT_TRUE(s->model.config.is_absolute());
  EXPECT_EQ(fs::canonical(s->model.config), fs::canonical(dir / "llava" / "config.json"));
  EXPECT_EQ(s->model.llava.text.num_hidden_layers, 32);
  EXPECT_EQ(s->model.dtype, models::Dtype::int4);
  EXPECT_EQ(s->network.direct.size(), 2u);
  EXPECT_EQ(s->network.direct_link(0, 2)->bandwidth_mbps, 50);
  EXPECT_EQ(s->network.direct_link(0, 2)->latency_ms, 0);  // the other field from [network]
  EXPECT_EQ(s->network.direct_link(1, 2)->bandwidth_mbps, 123.456);
  EXPECT_EQ(s->network.direct_link(1, 2)->latency_ms, 7);
  EXPECT_EQ(s->devices[2].mem_bytes, 3.1415926 * 1e9);
  EXPECT_EQ(s->workload.rate_per_s, 0.3);
  EXPECT_EQ(s->faults[2].factor, 2.5);
  EXPECT_EQ(s->faults[3].bandwidth_mbps, 10);
  EXPECT_EQ(s->planner.schedule, Schedule::fifo);
  EXPECT_FALSE(s->planner.replicas);
  EXPECT_EQ(s->faults[0].signal, Fault::Signal::stop);
  for (auto schedule : {Schedule::decode_first, Schedule::fifo}) {
    EXPECT_EQ(parse_schedule(schedule_name(schedule)), schedule);
  }
  EXPECT_EQ(schedule_name(Schedule::decode_first), "decode-first");
  EXPECT_FALSE(parse_schedule("lifo").has_value());
  expect_round_trip(*s);

  // Values set in code (not read from a file) round-trip too, including memory sizes whose
  // GB value has no short decimal form.
  Scenario t = *s;
  t.devices[1].mem_bytes = 1234567891.0;
  t.devices[1].tflops = 1.0 / 3.0;
  t.network.access[0] = Link{77.7, 1.5};
  t.network.topology = Topology::star;
  expect_round_trip(t);
}

TEST(ScenarioFile, StarAccessAndDirectLinks) {
  Scenario s = parse_ok(R"(
[model]
preset = "llava-1.5-7b"
[[devices]]
name = "a"
kind = "generic-4gb"
[[devices]]
name = "b"
kind = "generic-4gb"
[[devices]]
name = "c"
kind = "generic-4gb"
[network]
bandwidth_mbps = 400
latency_ms = 3
[[links]]
between = ["ap", "b"]
bandwidth_mbps = 100
[[links]]
between = ["c", "a"]
bandwidth_mbps = 1000
latency_ms = 0.5
)");
  EXPECT_EQ(s.network.access_link(0).bandwidth_mbps, 400);
  EXPECT_EQ(s.network.access_link(1).bandwidth_mbps, 100);
  EXPECT_EQ(s.network.access_link(1).latency_ms, 3);
  EXPECT_FALSE(s.network.direct_link(0, 1).has_value());
  ASSERT_TRUE(s.network.direct_link(2, 0).has_value());
  EXPECT_EQ(s.network.direct_link(2, 0)->bandwidth_mbps, 1000);
  EXPECT_EQ(s.network.direct_link(0, 2)->latency_ms, 0.5);
  expect_round_trip(s);
}

// ---------------------------------------------------------------------------------------------
// Bad scenarios: exact locations

struct BadCase {
  const char* file;
  int line;
  int column;
  const char* fragment;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.file; }

class BadScenarioFile : public testing::TestWithParam<BadCase> {};

TEST_P(BadScenarioFile, IsLocated) {
  const BadCase& c = GetParam();
  fs::path path = kBad / c.file;
  ASSERT_TRUE(fs::exists(path)) << path;
  auto s = load_scenario(path);
  ASSERT_FALSE(s.has_value()) << path << " parsed";
  const Error& e = s.error();
  EXPECT_EQ(e.file, path.string());
  EXPECT_EQ(e.line, c.line) << e.to_string();
  EXPECT_EQ(e.column, c.column) << e.to_string();
  EXPECT_NE(e.message.find(c.fragment), std::string::npos) << e.to_string();
  EXPECT_EQ(e.message.find('\n'), std::string::npos) << "one line: " << e.to_string();
}

INSTANTIATE_TEST_SUITE_P(
    Files, BadScenarioFile,
    testing::Values(
        BadCase{"empty.toml", 1, 1, "empty scenario"}, BadCase{"comments-only.toml", 1, 1, "empty scenario"},
        BadCase{"binary-garbage.toml", 2, 8, "binary data, not a TOML text file: NUL byte"},
        BadCase{"syntax-error.toml", 8, 12, "TOML syntax error"},
        BadCase{"wrong-type.toml", 7, 10, "devices[0].tflops: expected a number, got string \"fast\""},
        BadCase{"unknown-key.toml", 11, 1,
                "network.bandwith_mbps: unknown key in [network]; did you mean 'bandwidth_mbps'?"},
        BadCase{"unknown-top-level-key.toml", 9, 3, "fault: unknown key at top level; did you mean 'faults'?"},
        BadCase{"negative-bandwidth.toml", 15, 18, "links[0].bandwidth_mbps: must be > 0, got -5"},
        BadCase{"negative-latency.toml", 10, 14, "network.latency_ms: must be >= 0, got -0.5"},
        BadCase{"zero-tflops.toml", 12, 10, "devices[1].tflops: must be > 0, got 0"},
        BadCase{"missing-device-fields.toml", 5, 1, "devices[0]: missing 'mem_bw_gbs'"},
        BadCase{"duplicate-device.toml", 14, 8, "devices[2].name: duplicate device name \"nx\" (also devices[1])"},
        BadCase{"unknown-kind.toml", 7, 8,
                "devices[0].kind: unknown device kind \"jetson-orin-nx\"; did you mean 'jetson-orin-nx-16gb'?"},
        BadCase{"unknown-preset.toml", 3, 10, "model.preset: unknown preset \"llava-1.5-70b\""},
        BadCase{"bad-dtype.toml", 4, 9, "model.dtype: unknown dtype \"fp8\""},
        BadCase{"preset-and-config.toml", 4, 10, "model.config: give either preset or config, not both"},
        BadCase{"missing-model.toml", 1, 1, "model: missing [model] table"},
        BadCase{"no-devices.toml", 1, 1, "devices: no devices"},
        BadCase{"no-active-device.toml", 5, 1, "devices: no active device"},
        BadCase{"unknown-role.toml", 8, 8, "devices[0].role: unknown role \"backup\""},
        BadCase{"unknown-topology.toml", 10, 12, "network.topology: unknown topology \"ring\""},
        BadCase{"link-unknown-device.toml", 14, 19, "links[0].between: unknown device \"pi5\""},
        BadCase{"ap-link-in-mesh.toml", 13, 19, "links[0].between: links to \"ap\" need network.topology = \"star\""},
        BadCase{"in-flight-zero.toml", 11, 13, "workload.in_flight: must be >= 1, got 0"},
        BadCase{"requests-zero.toml", 10, 12, "workload.requests: must be >= 1, got 0"},
        BadCase{"output-tokens-zero.toml", 10, 17, "workload.output_tokens: must be >= 1, got 0"},
        BadCase{"image-size-negative.toml", 10, 20,
                "workload.image_size: expected [width, height] in pixels, two integers from 1 to 32768, got -480 for "
                "the height"},
        BadCase{"image-size-one-number.toml", 10, 14,
                "workload.image_size: expected [width, height] in pixels, two integers from 1 to 32768, got integer "
                "672"},
        BadCase{"poisson-without-rate.toml", 10, 11, "workload.rate_per_s: arrival = \"poisson\" needs rate_per_s"},
        BadCase{"unknown-arrival.toml", 10, 11, "workload.arrival: unknown arrival \"open\""},
        BadCase{"unknown-planner.toml", 10, 8, "planner.name: unknown planner \"adaptive\""},
        BadCase{"fault-unknown-device.toml", 15, 10, "faults[0].device: unknown device \"orin\""},
        BadCase{"fault-negative-time.toml", 10, 8, "faults[0].at_s: must be >= 0, got -1"},
        BadCase{"unknown-fault-kind.toml", 12, 8, "faults[0].kind: unknown kind \"crash\""},
        BadCase{"slowdown-without-factor.toml", 12, 8, "faults[0].factor: kind = \"slowdown\" needs factor"},
        BadCase{"slowdown-zero-factor.toml", 13, 10, "faults[0].factor: must be > 0, got 0"},
        BadCase{"unknown-schedule.toml", 10, 12, "planner.schedule: unknown schedule \"lifo\""},
        BadCase{"signal-not-dropout.toml", 14, 10, "faults[0].signal: only for kind = \"dropout\""},
        BadCase{"unknown-signal.toml", 13, 10, "faults[0].signal: unknown signal \"pause\""},
        BadCase{"replicas-not-bool.toml", 10, 12,
                "planner.replicas: expected a boolean (true or false), got string \"auto\""},
        BadCase{"mem-gb-huge.toml", 8, 10, "devices[0].mem_gb: must be <= 1e+06"},
        BadCase{"tflops-tiny.toml", 8, 10, "devices[0].tflops: must be >= 1e-06"},
        BadCase{"bandwidth-huge.toml", 15, 18, "links[0].bandwidth_mbps: must be <= 1e+09"},
        BadCase{"name-control-character.toml", 6, 8,
                "devices[0].name: must not contain control characters (found 0x1b)"},
        BadCase{"output-past-context.toml", 12, 17,
                "workload.output_tokens: a request needs 4640 positions (64 prompt + 576 image tokens + 4000 output "
                "tokens), more than the model's context of 4096 (max_position_embeddings): at most 3456 output "
                "tokens fit"},
        BadCase{"output-tokens-billion.toml", 10, 17, "workload.output_tokens: a request needs 1000000640 positions"},
        BadCase{"public-key-short.toml", 9, 14, "devices[0].public_key: must be a CURVE public key, 40 Z85 characters"},
        BadCase{"dropout-while-down.toml", 17, 8,
                "faults[1].kind: dropout of \"agx\" at 9 s while it is down (dropped at 5 s, no rejoin between)"}),
    [](const testing::TestParamInfo<BadCase>& info) {
      std::string name = fs::path(info.param.file).stem().string();
      std::replace(name.begin(), name.end(), '-', '_');
      return name;
    });

// Every file in tests/data/bad-scenarios is covered above and its `# expect:` line (what the CLI
// test looks for) is part of the message. model-fits-nowhere.toml is the planner's to reject.
TEST(ScenarioErrors, ExpectLinesMatchAndEveryFileIsCovered) {
  int files = 0;
  for (const auto& path : files_in(kBad, "model-fits-nowhere.toml")) {
    SCOPED_TRACE(path.string());
    ++files;
    auto s = load_scenario(path);
    ASSERT_FALSE(s.has_value());
    std::ifstream in(path, std::ios::binary);
    std::string first;
    std::getline(in, first);
    const std::string prefix = "# expect: ";
    if (fs::file_size(path) == 0) continue;  // empty.toml has no room for an expect line
    ASSERT_EQ(first.rfind(prefix, 0), 0u) << "first line must be '# expect: ...'";
    std::string expected = first.substr(prefix.size());
    EXPECT_NE(s.error().message.find(expected), std::string::npos) << s.error().to_string();
  }
  EXPECT_EQ(files, 48);  // keep in step with the BadScenarioFile list
}

TEST(ScenarioErrors, RandomBinaryGarbage) {
  fs::path dir = scratch_dir("garbage");
  std::mt19937 rng(42);
  for (int round = 0; round < 20; ++round) {
    std::string bytes(64 + round * 13, '\0');
    for (auto& b : bytes) b = static_cast<char>(rng() & 0xff);
    bytes[bytes.size() / 2] = '\0';  // at least one NUL
    fs::path path = dir / fmt::format("garbage-{}.toml", round);
    write_file(path, bytes);
    auto s = load_scenario(path);
    ASSERT_FALSE(s.has_value());
    EXPECT_EQ(s.error().file, path.string());
    EXPECT_GE(s.error().line, 1);
    EXPECT_GE(s.error().column, 1);
    EXPECT_NE(s.error().message.find("binary data"), std::string::npos) << s.error().to_string();
  }
  // A known position: line 2, after "ab" and a two-byte UTF-8 character.
  Error e = parse_error("name = \"x\"\nab\xC3\xA9\xFF", "g.toml");
  EXPECT_EQ(e.line, 2);
  EXPECT_EQ(e.column, 4);
  EXPECT_NE(e.message.find("invalid UTF-8 byte 0xff"), std::string::npos) << e.to_string();
}

// ---------------------------------------------------------------------------------------------
// Bad scenarios written inline: the rest of the rules

std::string with_minimal(std::string_view extra) { return std::string(kMinimal) + std::string(extra); }

TEST(ScenarioErrors, InlineCases) {
  struct Case {
    std::string text;
    int line;
    int column;
    std::string fragment;
  };
  const std::vector<Case> cases = {
      // kMinimal is lines 1-7 (a leading newline, then 6 lines); extras start on line 8.
      {with_minimal("[planner]\nname = \"uniformm\"\n"), 9, 8, "did you mean 'uniform'?"},
      {with_minimal("[planner]\nbackups = \"yes\"\n"), 9, 11, "planner.backups: expected a boolean"},
      {with_minimal("[workload]\nrequests = 2.5\n"), 9, 12, "workload.requests: expected an integer, got float 2.5"},
      {with_minimal("[workload]\nprompt_tokens = 0\n"), 9, 17, "workload.prompt_tokens: must be >= 1, got 0"},
      {with_minimal("[workload]\nimages_per_request = -1\n"), 9, 22, "workload.images_per_request: must be >= 0"},
      {with_minimal("[workload]\narrival = \"poisson\"\nrate_per_s = 0\n"), 10, 14, "workload.rate_per_s: must be > 0"},
      {with_minimal("[workload]\nrequests = 99999999999\n"), 9, 12, "workload.requests: out of range"},
      {with_minimal("[[faults]]\nat_s = 1\ndevice = \"agx\"\nkind = \"rejoin\"\n"), 11, 8,
       "faults[0].kind: rejoin of \"agx\" at 1 s without an earlier dropout"},
      {with_minimal("[[faults]]\nat_s = 1\ndevice = \"agx\"\nkind = \"dropout\"\nfactor = 2\n"), 12, 10,
       "faults[0].factor: only for kind = \"slowdown\""},
      {with_minimal("[[faults]]\nat_s = 1\ndevice = \"agx\"\nkind = \"link\"\n"), 11, 8,
       "faults[0].bandwidth_mbps: kind = \"link\" needs bandwidth_mbps"},
      {with_minimal("[[faults]]\nat_s = 1\ndevice = \"agx\"\n"), 8, 1, "faults[0]: missing 'kind'"},
      {with_minimal("[[links]]\nbetween = [\"agx\"]\n"), 9, 11, "links[0].between: expected two names"},
      {with_minimal("[[links]]\nbetween = [\"agx\", \"agx\"]\n"), 9, 11, "two different ends"},
      {with_minimal("[[links]]\nbetween = [\"agx\", \"ap\"]\n[[links]]\nbetween = [\"ap\", \"agx\"]\n"), 11, 11,
       "links[1].between: duplicate link (also links[0])"},
      {with_minimal("[[links]]\nlatency_ms = 1\n"), 8, 1, "links[0]: missing 'between'"},
      {with_minimal("[network]\nbandwidth_mbps = 0\n"), 9, 18, "network.bandwidth_mbps: must be > 0, got 0"},
      {with_minimal("[[devices]]\nname = \"ap\"\nkind = \"generic-4gb\"\n"), 9, 8, "reserved for the access point"},
      {with_minimal("[[devices]]\nname = \"x\"\nkind = \"generic-4gb\"\nmem_bw_gbs = -3\n"), 11, 14,
       "devices[1].mem_bw_gbs: must be > 0, got -3"},
      {with_minimal("[[devices]]\nkind = \"generic-4gb\"\n"), 8, 1, "devices[1]: missing 'name'"},
      {with_minimal("[[devices]]\nname = \"x\"\nkind = \"generic-4gb\"\ndropout_rate = -1\n"), 11, 16,
       "devices[1].dropout_rate: must be >= 0"},
      {with_minimal("[[devices]]\nname = \"x\"\nkind = \"generic-4gb\"\ntflop = 1\n"), 11, 1,
       "devices[1].tflop: unknown key in [[devices]]; did you mean 'tflops'?"},
      {with_minimal("[planner]\nobjectiv = \"latency\"\n"), 9, 1, "planner.objectiv: unknown key"},
      {with_minimal("[workload]\nin_flite = 2\n"), 9, 1,
       "workload.in_flite: unknown key in [workload]; did you mean 'in_flight'?"},
      {with_minimal("[[faults]]\nat_s = 1\ndevice = \"agx\"\nkind = \"dropout\"\nwhen = 3\n"), 12, 1,
       "faults[0].when: unknown key"},
      {with_minimal("[[links]]\nbetween = [\"agx\", \"ap\"]\nbandwidth = 3\n"), 10, 1,
       "links[0].bandwidth: unknown key in [[links]]; did you mean 'bandwidth_mbps'?"},
      {"name = 3\n" + std::string(kMinimal), 1, 8, "name: expected a string, got integer 3"},
      {"devices = 3\n[model]\npreset = \"llava-1.5-7b\"\n", 1, 11, "devices: expected an array of tables"},
      {"model = \"llava\"\n[[devices]]\nname = \"a\"\nkind = \"generic-4gb\"\n", 1, 9, "model: expected a table"},
      {"[model]\ndtype = \"fp16\"\n[[devices]]\nname = \"a\"\nkind = \"generic-4gb\"\n", 1, 1,
       "model: missing 'preset' or 'config'"},
      {"[model]\npreset = \"llava-1.5-7b\"\ndtype = 16\n", 3, 9, "model.dtype: expected a string, got integer 16"},
      {"[model]\nconfig = \"nowhere/config.json\"\n[[devices]]\nname = \"a\"\nkind = \"generic-4gb\"\n", 2, 10,
       "model.config: cannot load"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    Error e = parse_error(c.text, "inline.toml");
    EXPECT_EQ(e.file, "inline.toml");
    EXPECT_EQ(e.line, c.line) << e.to_string();
    EXPECT_EQ(e.column, c.column) << e.to_string();
    EXPECT_NE(e.message.find(c.fragment), std::string::npos) << e.to_string();
  }
}

TEST(ScenarioErrors, MissingFile) {
  auto s = load_scenario(kBad / "does-not-exist.toml");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().file, (kBad / "does-not-exist.toml").string());
  EXPECT_NE(s.error().message.find("cannot read scenario"), std::string::npos);
}

}  // namespace
}  // namespace adaptlink::partition
