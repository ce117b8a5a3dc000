// The README's logging and metrics examples, compiled and run as tests (check_readme.cmake).
#include <gtest/gtest.h>

#include "test_util.hpp"

// BEGIN README
#include <kvr.hpp>

#include <cstdio>
#include <string>

// kvr's log lines go to the engine's logger (here: stdout). Without a callback kvr writes
// warnings and errors to stderr, each distinct message once.
void route_kvr_logs() {
  kvr::set_log_callback(KVR_LOG_INFO, [](std::uint32_t level, const char* target,
                                         const char* message) {
    static const char* const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    std::printf("[%s] %s: %s\n", names[level <= 5 ? level : 0], target, message);
  });
}

// The body of the engine's GET /metrics (Content-Type: text/plain; version=0.0.4): every
// open kvr handle's counters, gauges and store/load/lookup latency histograms, labelled by
// tier, namespace and path.
std::string metrics_endpoint_body() { return kvr::metrics_text(); }
// END README

TEST(Readme, ObservabilityExampleRuns) {
  route_kvr_logs();
  kvr_test::TempDir dir("kvr_readme_obs");
  {
    kvr::FsOptions o;
    o.root = dir.path;
    o.ns = "readme-observability";
    o.direct_io = KVR_DIRECT_IO_OFF;
    kvr::FsStore store(o);
    const std::string body = metrics_endpoint_body();
    EXPECT_NE(body.find("# TYPE kvr_op_latency_seconds histogram"), std::string::npos);
    EXPECT_NE(body.find("namespace=\"readme-observability\""), std::string::npos) << body;
  }
  kvr::set_log_callback(KVR_LOG_WARN, nullptr);
}
