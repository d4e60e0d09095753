// Seeded draws shared by the simulator's arrivals and the sweeps' dropouts: exponential variates by inversion on
// 53 random bits, so the same seed gives the same numbers on every platform and standard library.
#pragma once

#include <cmath>
#include <random>

namespace adaptlink::sim::detail {

// Uniform in [0, 1).
inline double unit_uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }
// Exponential with rate `rate` (events per unit of time).
inline double exponential_by_rate(std::mt19937_64& rng, double rate) { return -std::log1p(-unit_uniform(rng)) / rate; }
// Exponential with mean `mean`.
inline double exponential_by_mean(std::mt19937_64& rng, double mean) { return -std::log1p(-unit_uniform(rng)) * mean; }

}  // namespace adaptlink::sim::detail
