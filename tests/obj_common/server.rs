//! A SeaweedFS of a test's own, started through `scripts/seaweedfs.sh` with its state in a
//! temp dir (free ports, its own data), for the tests that stop, freeze or reconfigure their
//! server; the shared test server is never touched.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A private server, stopped on drop (also when the test fails).
pub struct PrivateServer {
    state: tempfile::TempDir,
    /// What `start` printed: the `export` lines of its endpoints.
    exports: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/seaweedfs.sh")
}

impl PrivateServer {
    /// Starts a server, with `env` for the script (identities, a TLS certificate...).
    pub fn start(env: &[(&str, &OsStr)]) -> PrivateServer {
        let state = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(script());
        cmd.arg("start").env("KVR_SEAWEEDFS_STATE", state.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "seaweedfs.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exports = String::from_utf8(out.stdout).unwrap();
        PrivateServer { state, exports }
    }

    /// The value of the `export NAME=` line `start` printed, if any.
    fn export(&self, name: &str) -> Option<String> {
        let prefix = format!("export {name}=");
        self.exports
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
    }

    /// Its http endpoint (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        self.export("KVR_S3_TEST_ENDPOINT")
            .unwrap_or_else(|| panic!("no endpoint in {:?}", self.exports))
    }

    /// Its https endpoint, started with a TLS certificate and key.
    pub fn https_endpoint(&self) -> String {
        self.export("KVR_S3_TEST_HTTPS_ENDPOINT")
            .unwrap_or_else(|| panic!("no https endpoint in {:?}", self.exports))
    }

    /// Runs `seaweedfs.sh what` on it (`down`, `up`, `pause`, `resume`, `stop`).
    pub fn run(&self, what: &str) {
        let out = Command::new(script())
            .arg(what)
            .env("KVR_SEAWEEDFS_STATE", self.state.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "seaweedfs.sh {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test: stop the server all the same, without a second panic.
            let _ = Command::new(script())
                .arg("stop")
                .env("KVR_SEAWEEDFS_STATE", self.state.path())
                .status();
        } else {
            self.run("stop");
        }
    }
}
