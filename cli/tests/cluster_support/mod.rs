//! What the cluster tests of the `peerlink` command share: a `peerlink serve --cluster` process
//! (killed with SIGKILL when dropped) and its start-up lines, a temporary home, and the logs of
//! the test's own nodes when `RUST_LOG` is set.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

/// Every wait gives up after this long, saying what it waited for.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running `peerlink serve --cluster …` and the `name  value` lines it printed on start
/// (`entity_id`, `public_key`, `url`, `cluster`).
pub struct ServeProcess {
    pub child: Child,
    pub fields: BTreeMap<String, String>,
    pub stderr: PathBuf,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// `peerlink --config HOME/peerlink.toml serve --open --listen 127.0.0.1:0 --cluster URL
    /// ARGS…` with its identity in `home` and link rates far above the default (hundreds of
    /// frames a second on one link); waits for its `cluster` line.
    pub fn start(home: &Path, redis_url: &str, name: &str, args: &[&str]) -> ServeProcess {
        let stderr = home.join(format!("{name}.stderr"));
        let config = home.join("peerlink.toml");
        std::fs::write(&config, "[limits]\nframes_per_minute = 1000000\n").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_peerlink"))
            .arg("--config")
            .arg(&config)
            .args(["serve", "--open", "--listen", "127.0.0.1:0", "--cluster", redis_url])
            .args(["--cluster-name", name])
            .args(args)
            .env("PEERLINK_HOME", home)
            .env("RUST_LOG", "peerlink_host=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut fields = BTreeMap::new();
        while !fields.contains_key("cluster") {
            let line = lines.recv_timeout(DEADLINE).unwrap_or_else(|_| {
                let log = std::fs::read_to_string(&stderr).unwrap_or_default();
                panic!("node {name} printed no cluster line; stderr:\n{log}")
            });
            if let Some((k, v)) = line.split_once(' ') {
                fields.insert(k.to_owned(), v.trim().to_owned());
            }
        }
        ServeProcess { child, fields, stderr }
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.fields["url"]
    }

    /// Whether its log shows a panic.
    pub fn panicked(&self) -> bool {
        std::fs::read_to_string(&self.stderr).unwrap_or_default().contains("panicked")
    }
}

/// A fresh directory under the system's temporary one, unique to this process and call.
pub fn temp_dir(what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "peerlink-cluster-{what}-{}-{}",
        std::process::id(),
        nanos.as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// With `RUST_LOG` set, the test's own nodes log to its output.
pub fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
