//! Starting real servers (PostgreSQL, the tansu broker, the garage S3 server) for tests.
//!
//! Each server has a script in `scripts/` with `start DIR` and `stop DIR`. `start` launches
//! the server on 127.0.0.1 and a free port with its state in DIR, waits until it answers,
//! and prints `KEY=VALUE` lines (connection details) on stdout. A [`Server`] runs `start`,
//! keeps the variables, and runs `stop` when dropped (also when a test panics). A server
//! that cannot start panics with the script's own output: tests never skip silently.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// A running test server; stopped on drop.
#[derive(Debug)]
pub struct Server {
    script: PathBuf,
    dir: tempfile::TempDir,
    vars: HashMap<String, String>,
}

/// The repository's `scripts/` directory.
pub fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

impl Server {
    /// Starts `scripts/{name}.sh start DIR`; panics with the reason if it cannot.
    pub fn start(name: &str) -> Server {
        Server::start_with(name, &[])
    }

    /// [`Server::start`] with extra environment for the start script (e.g. `PG_FAKETIME`
    /// for `postgres`, see `scripts/postgres.sh`).
    pub fn start_with(name: &str, env: &[(&str, &str)]) -> Server {
        let script = scripts_dir().join(format!("{name}.sh"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("overseer-{name}-"))
            .tempdir()
            .expect("temp dir for a test server");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let vars: HashMap<String, String> = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let server = Server { script, dir, vars };
        if !out.status.success() {
            panic!(
                "test server {name} did not start ({}).\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
                 Install the test servers with scripts/install-test-deps.sh",
                out.status
            );
        }
        server
    }

    /// A variable the start script printed; panics if it did not print it.
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("start script printed no {key}: {:?}", self.vars))
    }

    /// `scripts/{name}.sh restart DIR`: the server stops at once, as in a crash, and
    /// starts again with the same state and port (only scripts that offer it:
    /// `postgres`, and `tansu` started with `TANSU_STORAGE=sqlite`). Panics with the
    /// script's output if it cannot.
    pub fn restart(&self) {
        self.run("restart");
    }

    /// `scripts/{name}.sh COMMAND DIR`, for the commands a script offers beyond
    /// start and stop (`tansu`'s `crash`, then `restart`). Panics with the script's output
    /// if it fails.
    pub fn run(&self, command: &str) {
        let out = Command::new("bash")
            .arg(&self.script)
            .arg(command)
            .arg(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.script.display()));
        assert!(
            out.status.success(),
            "{} {command} failed ({}):\n{}{}",
            self.script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's state directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A name unique within this machine for a test's topic, bucket prefix or schema.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        overseer_dal::update::now_us(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
