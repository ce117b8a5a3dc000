// Helpers shared by kvr's gtest files.
#pragma once

#include <gtest/gtest.h>
#include <kvr.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

namespace kvr_test {

/// A name unique to this process and call, for regions and temp paths.
inline std::string unique_name(const std::string& stem) {
  static std::atomic<int> counter{0};
  return stem + "_" + std::to_string(getpid()) + "_" + std::to_string(counter++);
}

/// The current thread's kvr error message as a std::string.
inline std::string last_error() { return kvr_last_error_message(); }

/// Runs `body` in a forked child; the child's exit code is body()'s return value.
inline pid_t fork_child(const std::function<int()>& body) {
  pid_t pid = fork();
  if (pid == 0) {
    int rc = 99;
    try {
      rc = body();
    } catch (...) {
      rc = 98;
    }
    _exit(rc);
  }
  return pid;
}

/// Waits for a child and returns its exit code (or 128+signal).
inline int wait_child(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

/// A pipe used to signal "ready" from child to parent (or back).
struct Pipe {
  int fds[2] = {-1, -1};
  Pipe() {
    if (pipe(fds) != 0) std::abort();
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  void close_read() {
    if (fds[0] >= 0) close(fds[0]);
    fds[0] = -1;
  }
  void close_write() {
    if (fds[1] >= 0) close(fds[1]);
    fds[1] = -1;
  }
  void signal() { (void)!write(fds[1], "x", 1); }
  bool wait() {
    char c;
    return read(fds[0], &c, 1) == 1;
  }
};

/// A fresh directory under /tmp, removed with its contents on destruction.
struct TempDir {
  std::string path;
  explicit TempDir(const char* stem = "kvr_test") {
    std::string tmpl = std::string("/tmp/") + stem + "_XXXXXX";
    if (!mkdtemp(&tmpl[0])) std::abort();
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

/// The S3 test server's endpoint (KVR_S3_TEST_ENDPOINT, set by scripts/run-tests.sh from
/// scripts/seaweedfs.sh), or "" when there is none.
inline std::string s3_test_endpoint() {
  const char* e = std::getenv("KVR_S3_TEST_ENDPOINT");
  return e ? e : "";
}

}  // namespace kvr_test

/// EXPECT a kvr call to return `status`, printing the library's message on mismatch.
#define EXPECT_KVR(status, call)                                                      \
  do {                                                                                \
    kvr_status kvr_s_ = (call);                                                       \
    EXPECT_EQ(kvr_s_, status) << #call << " -> " << kvr_status_str(kvr_s_) << ": "  \
                              << kvr_last_error_message();                            \
  } while (0)
#define ASSERT_KVR(status, call)                                                      \
  do {                                                                                \
    kvr_status kvr_s_ = (call);                                                       \
    ASSERT_EQ(kvr_s_, status) << #call << " -> " << kvr_status_str(kvr_s_) << ": "  \
                              << kvr_last_error_message();                            \
  } while (0)

/// Declares `var` as the S3 test server's endpoint, or skips the test when there is none.
#define ENDPOINT_OR_SKIP(var)                                                   \
  std::string var = kvr_test::s3_test_endpoint();                              \
  if (var.empty()) {                                                           \
    GTEST_SKIP() << "skipped: no S3 test server (run scripts/seaweedfs.sh)"; \
  }
