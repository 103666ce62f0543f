//! The `peerlink` command end to end, one process per role as in README.md ("Two terminals"):
//! a relay (`serve --open`), bob listening through it (`listen --open --relay`), and alice
//! sending through it (`send --relay`) or straight to bob's node over HTTP only (`send --http`);
//! and a subscriber and a publisher on a topic at the relay or at the topic's own node
//! (`subscribe`, `publish`).
//! Every wait has a deadline; the only polling is for a line to appear, a process to end, or
//! the relay to hold bob's link. Every process started is killed when the test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Every wait gives up after this long, saying what it waited for.
const DEADLINE: Duration = Duration::from_secs(30);

/// The processes of one test, in a temporary directory of their own (a `PEERLINK_HOME` per
/// role, and each process's stderr in a file). Dropping it kills every process still running
/// and removes the directory.
struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

/// A long-running process's stdout, line by line, and where its stderr goes.
struct Running {
    name: String,
    lines: Receiver<String>,
    stderr: PathBuf,
}

/// A finished command.
struct Finished {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Procs {
    fn new(test: &str) -> Procs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "peerlink-cli-{test}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Procs { dir, children: Vec::new() }
    }

    /// `peerlink ARGS` with `PEERLINK_HOME` = `home` (a directory in the test's), stdout piped.
    fn command(&self, home: &str, args: &[&str], log: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_peerlink"));
        c.args(args)
            .env("PEERLINK_HOME", self.dir.join(home))
            .env_remove("RUST_LOG")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap());
        c
    }

    /// Starts a long-running `peerlink ARGS` (a node) as `name`.
    fn start(&mut self, name: &str, home: &str, args: &[&str]) -> Running {
        let stderr = self.dir.join(format!("{name}.stderr"));
        let mut child = self.command(home, args, &stderr).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        self.children.push((name.to_owned(), child));
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { name: name.to_owned(), lines, stderr }
    }

    /// Runs `peerlink ARGS` to its end (at most [`DEADLINE`]).
    fn run(&mut self, name: &str, home: &str, args: &[&str]) -> Finished {
        let stderr = self.dir.join(format!("{name}.stderr"));
        let mut child = self.command(home, args, &stderr).spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > DEADLINE {
                self.children.push((name.to_owned(), child));
                panic!(
                    "`peerlink {}` ({name}) still running after {DEADLINE:?}; stderr:\n{}",
                    args.join(" "),
                    read(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Finished { success: status.success(), stdout: out.join().unwrap(), stderr: read(&stderr) }
    }

    /// Runs `peerlink ARGS`, which must succeed.
    fn ok(&mut self, name: &str, home: &str, args: &[&str]) -> String {
        let f = self.run(name, home, args);
        assert!(
            f.success,
            "`peerlink {}` ({name}) failed; stdout:\n{}\nstderr:\n{}",
            args.join(" "),
            f.stdout,
            f.stderr
        );
        f.stdout
    }

    /// `peerlink keygen --id ID` in `home`; returns the public key it printed.
    fn keygen(&mut self, home: &str, id: &str) -> String {
        let out = self.ok(&format!("keygen-{id}"), home, &["keygen", "--id", id]);
        field(&out, "public_key").unwrap_or_else(|| panic!("no public_key in:\n{out}"))
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of a `name  value` line of `peerlink`'s output.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().to_owned())
    })
}

impl Running {
    /// The next stdout line that `pick` accepts, skipping others; panics after [`DEADLINE`].
    fn line<T>(&self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(t) = pick(&l) {
                        return t;
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => format!("timed out after {DEADLINE:?}"),
                        RecvTimeoutError::Disconnected => "its stdout closed".to_owned(),
                    };
                    panic!(
                        "{}: {why} waiting for {what}; stderr:\n{}",
                        self.name,
                        read(&self.stderr)
                    );
                }
            }
        }
    }

    /// The value of the `name  value` line a node prints when it starts (`url`, `relay`, …).
    fn field(&self, name: &str) -> String {
        self.line(&format!("its {name} line"), |l| field(l, name))
    }
}

/// `GET path` on the node at `base` (`http://host:port`), without a token: the body.
fn get(base: &str, path: &str) -> Option<String> {
    let addr = base.strip_prefix("http://")?;
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The value of the metric sample `name` (with its labels) in a Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls the relay's metrics until a client is connected to it: a peers link, or a long-poll
/// held (a `WEBSOCKET_FIRST` node reachable through a relay long-polls it until it has a frame
/// to send, spec §16.2, §19).
fn wait_for_a_client(relay: &str) {
    let start = Instant::now();
    loop {
        let held = get(relay, "/metrics").and_then(|m| {
            let links = sample(&m, "peerlink_links{endpoint=\"peers\",direction=\"inbound\"}")?;
            Some(links + sample(&m, "peerlink_held_http_calls")?)
        });
        if held.is_some_and(|n| n > 0) {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "no client at the relay after {DEADLINE:?} ({held:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A relay on a free port: the running process, its base URL and its public key.
fn relay_with_key(p: &mut Procs) -> (Running, String, String) {
    let relay = p.start("relay", "relay", &["serve", "--open", "--listen", "127.0.0.1:0"]);
    let key = relay.field("public_key");
    let url = relay.field("url");
    (relay, url, key)
}

/// A relay on a free port: the running process and its base URL.
fn relay(p: &mut Procs) -> (Running, String) {
    let (relay, url, _) = relay_with_key(p);
    (relay, url)
}

/// Bob's message line: `FROM<tab>TEXT`.
fn message(l: &str, from: &str, text: &str) -> Option<()> {
    (l == format!("{from}\t{text}")).then_some(())
}

#[test]
fn alice_reaches_bob_through_a_relay_given_on_the_command_line() {
    let mut p = Procs::new("relay");
    let bob_key = p.keygen("bob", "bob");
    p.keygen("alice", "alice");
    let (_relay, relay_url) = relay(&mut p);
    let caps = get(&relay_url, "/peers/capabilities").unwrap();
    let caps: peerlink_core::endpoints::CapabilitiesBody = serde_json::from_str(&caps).unwrap();
    let relay_id = caps.node_id;
    let bob = p.start(
        "bob",
        "bob",
        &["listen", "--open", "--relay", &relay_url, "--listen", "127.0.0.1:0"],
    );
    // Bob learned the relay's id and key from it, and says so.
    let bob_relay = bob.field("relay");
    assert!(bob_relay.ends_with(&format!(" at {relay_url}")), "{bob_relay}");
    wait_for_a_client(&relay_url);

    let out = p.ok(
        "alice",
        "alice",
        &["send", "--relay", &relay_url, "--to", "bob", "--key", &bob_key, "hi"],
    );
    assert!(out.starts_with("delivered "), "{out}");
    bob.line("alice's message", |l| message(l, "alice", "hi"));

    // HTTP only through the relay: not one WebSocket frame, the handshake included.
    let out = p.ok(
        "alice-http",
        "alice",
        &["send", "--http", "--relay", &relay_url, "--to", "bob", "--key", &bob_key, "by HTTP"],
    );
    assert!(out.contains("(websocket frames 0, http frames "), "{out}");
    assert!(out.contains(" over http in "), "the result names the transport: {out}");
    bob.line("alice's HTTP message", |l| message(l, "alice", "by HTTP"));

    // The relay's id given, and right: checked against what it says, then pinned.
    let out = p.ok(
        "alice-id",
        "alice",
        &[
            "send",
            "--relay",
            &relay_url,
            "--relay-id",
            &relay_id,
            "--to",
            "bob",
            "--key",
            &bob_key,
            "pinned",
        ],
    );
    assert!(out.starts_with("delivered "), "{out}");
    bob.line("alice's third message", |l| message(l, "alice", "pinned"));
}

#[test]
fn send_http_goes_over_http_only() {
    let mut p = Procs::new("http");
    let bob_key = p.keygen("bob", "bob");
    p.keygen("alice", "alice");
    let bob = p.start("bob", "bob", &["listen", "--open", "--listen", "127.0.0.1:0"]);
    let bob_url = bob.field("url");
    let out = p.ok(
        "alice",
        "alice",
        &["send", "--http", "--to", "bob", "--url", &bob_url, "--key", &bob_key, "over HTTP"],
    );
    assert!(out.contains("(websocket frames 0, http frames "), "{out}");
    bob.line("alice's message", |l| message(l, "alice", "over HTTP"));
}

#[test]
fn nodes_on_tokio_and_on_smol_talk_through_a_relay_on_tokio() {
    let mut p = Procs::new("tokio");
    let bob_key = p.keygen("bob", "bob");
    p.keygen("alice", "alice");
    let relay = p.start(
        "relay",
        "relay",
        &["--driver", "tokio", "serve", "--open", "--listen", "127.0.0.1:0"],
    );
    let relay_url = relay.field("url");
    let bob = p.start(
        "bob",
        "bob",
        &["listen", "--open", "--relay", &relay_url, "--listen", "127.0.0.1:0"],
    );
    bob.field("relay");
    wait_for_a_client(&relay_url);
    let out = p.ok(
        "alice",
        "alice",
        &[
            "--driver", "tokio", "send", "--relay", &relay_url, "--to", "bob", "--key", &bob_key,
            "hi",
        ],
    );
    assert!(out.starts_with("delivered "), "{out}");
    bob.line("alice's message", |l| message(l, "alice", "hi"));
    let bad = p.run("alice-bad", "alice", &["--driver", "async-std", "keygen"]);
    assert!(!bad.success && bad.stderr.contains("--driver"), "{}", bad.stderr);
}

#[test]
fn request_prints_the_answer() {
    let mut p = Procs::new("request-publish");
    let bob_key = p.keygen("bob", "bob");
    p.keygen("alice", "alice");
    let (_relay, relay_url) = relay(&mut p);
    let bob = p.start(
        "bob",
        "bob",
        &["listen", "--open", "--relay", &relay_url, "--listen", "127.0.0.1:0"],
    );
    bob.field("relay");
    wait_for_a_client(&relay_url);
    // `listen` answers a task request with an echo.
    let out = p.ok(
        "alice",
        "alice",
        &["request", "--relay", &relay_url, "--to", "bob", "--key", &bob_key, "ping?"],
    );
    assert_eq!(out.trim(), "ping?", "{out}");
}

#[test]
fn a_relay_url_given_as_the_peers_says_to_use_relay() {
    let mut p = Procs::new("wrong-url");
    let bob_key = p.keygen("bob", "bob");
    let (_relay, relay_url) = relay(&mut p);
    let f = p.run(
        "alice",
        "alice",
        &["send", "--to", "bob", "--url", &relay_url, "--key", &bob_key, "hi"],
    );
    assert!(!f.success, "{}", f.stdout);
    assert!(f.stderr.contains(&format!("the node at {relay_url} is node-")), "{}", f.stderr);
    assert!(
        f.stderr.contains(&format!("use --relay {relay_url} instead of --url")),
        "{}",
        f.stderr
    );
}

#[test]
fn a_relay_id_that_is_not_the_relays_is_refused() {
    let mut p = Procs::new("wrong-relay-id");
    let bob_key = p.keygen("bob", "bob");
    let (_relay, relay_url) = relay(&mut p);
    let f = p.run(
        "alice",
        "alice",
        &[
            "send",
            "--relay",
            &relay_url,
            "--relay-id",
            "carol",
            "--to",
            "bob",
            "--key",
            &bob_key,
            "hi",
        ],
    );
    assert!(!f.success, "{}", f.stdout);
    assert!(f.stderr.contains(&format!("the node at {relay_url} is node-")), "{}", f.stderr);
    assert!(f.stderr.contains("not carol: check --relay and --relay-id"), "{}", f.stderr);
}

#[test]
fn a_relay_whose_login_names_another_node_gets_nothing_signed() {
    // --relay-id and --relay-key given: nothing is asked of the relay beforehand, so it is the
    // login that finds the node there is not carol (spec §23.2), and refuses to sign.
    let mut p = Procs::new("pinned-login");
    let bob_key = p.keygen("bob", "bob");
    let (_relay, relay_url, relay_key) = relay_with_key(&mut p);
    let f = p.run(
        "alice",
        "alice",
        &[
            "send",
            "--relay",
            &relay_url,
            "--relay-id",
            "carol",
            "--relay-key",
            &relay_key,
            "--to",
            "bob",
            "--key",
            &bob_key,
            "hi",
        ],
    );
    assert!(!f.success, "{}", f.stdout);
    assert!(f.stderr.contains(&format!("the node at {relay_url} is node-")), "{}", f.stderr);
    assert!(f.stderr.contains(", not carol"), "{}", f.stderr);
    assert!(f.stderr.contains("error: not delivered"), "{}", f.stderr);
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes_and_json_logs_are_one_object_a_line() {
    let mut p = Procs::new("logs");
    let text = p.run("keygen-text", "text", &["keygen", "--id", "carol"]);
    assert!(text.success, "{}", text.stderr);
    assert!(text.stderr.contains("created a new identity"), "{}", text.stderr);
    assert!(!text.stderr.contains('\u{1b}'), "escape codes in a file: {:?}", text.stderr);

    let json = p.run("keygen-json", "json", &["--log-format", "json", "keygen", "--id", "dave"]);
    assert!(json.success, "{}", json.stderr);
    let lines: Vec<serde_json::Value> = json
        .stderr
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "created a new identity"
            && l["level"] == "INFO"
            && l["fields"]["entity"] == "dave"),
        "{lines:?}"
    );

    let bad = p.run("keygen-bad", "bad", &["--log-format", "xml", "keygen", "--id", "erin"]);
    assert!(!bad.success && bad.stderr.contains("--log-format"), "{}", bad.stderr);
}

/// A config file in the test's directory that trusts `peers` (entity id, public key), as a
/// subscriber needs to accept their publications (they are signed by the publisher, whose key
/// the node checks); returns its path.
fn trusting(p: &Procs, name: &str, peers: &[(&str, &str)]) -> String {
    let toml: String = peers
        .iter()
        .map(|(id, key)| format!("[[peers]]\nentity_id = \"{id}\"\npublic_key = \"{key}\"\n\n"))
        .collect();
    let path = p.dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The subscriber's line once its subscription is on the link to `host`.
fn subscribed(l: &str, topic: &str, host: &str) -> Option<()> {
    (l == format!("subscribed {topic} at {host}")).then_some(())
}

/// A topic line of `peerlink subscribe`: `TOPIC FROM DATA`.
fn topic_line(l: &str, topic: &str, from: &str, data: &str) -> Option<()> {
    (l == format!("{topic} {from} {data}")).then_some(())
}

#[test]
fn a_publication_through_a_relay_reaches_a_subscriber_there() {
    let mut p = Procs::new("publish-relay");
    let alice_key = p.keygen("alice", "alice");
    p.keygen("bob", "bob");
    let (_relay, relay_url) = relay(&mut p);
    let caps = get(&relay_url, "/peers/capabilities").unwrap();
    let caps: peerlink_core::endpoints::CapabilitiesBody = serde_json::from_str(&caps).unwrap();
    let config = trusting(&p, "bob.toml", &[("alice", &alice_key)]);
    let bob =
        p.start("bob", "bob", &["--config", &config, "subscribe", "--relay", &relay_url, "news"]);
    bob.line("bob's subscription", |l| subscribed(l, "news", &caps.node_id));

    let out = p.ok("alice", "alice", &["publish", "--relay", &relay_url, "news", r#"{"n": 1}"#]);
    assert_eq!(out.trim(), format!("published on news at {}", caps.node_id));
    bob.line("alice's publication", |l| topic_line(l, "news", "alice", r#"{"n":1}"#));

    // Text that is not JSON goes as a JSON string.
    p.ok("alice-text", "alice", &["publish", "--relay", &relay_url, "news", "hello world"]);
    bob.line("alice's text", |l| topic_line(l, "news", "alice", r#""hello world""#));
}

#[test]
fn a_publication_at_the_topics_own_node_reaches_a_subscriber_there() {
    let mut p = Procs::new("publish-direct");
    let alice_key = p.keygen("alice", "alice");
    let bob_key = p.keygen("bob", "bob");
    p.keygen("carol", "carol");
    // Bob's node hosts the topic; carol subscribes there and alice publishes there.
    let bob = p.start("bob", "bob", &["listen", "--open", "--listen", "127.0.0.1:0"]);
    let bob_url = bob.field("url");
    let at_bob = ["--to", "bob", "--key", &bob_key, "--url", &bob_url];
    let config = trusting(&p, "carol.toml", &[("alice", &alice_key)]);
    let carol_args = [&["--config", &config, "subscribe"][..], &at_bob, &["news"]].concat();
    let carol = p.start("carol", "carol", &carol_args);
    carol.line("carol's subscription", |l| subscribed(l, "news", "bob"));

    let out = p.ok("alice", "alice", &[&["publish"][..], &at_bob, &["news", "-7"]].concat());
    assert_eq!(out.trim(), "published on news at bob");
    carol.line("alice's publication", |l| topic_line(l, "news", "alice", "-7"));
}

#[test]
fn publish_says_when_no_link_to_the_topics_node_comes_up() {
    let mut p = Procs::new("publish-nobody");
    let bob_key = p.keygen("bob", "bob");
    // A port nothing listens on (bound, then freed).
    let url = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", free.local_addr().unwrap())
    };
    let args = ["publish", "--to", "bob", "--key", &bob_key, "--url", &url];
    let f = p.run("alice", "alice", &[&args[..], &["--timeout-secs", "1", "news", "x"]].concat());
    assert!(!f.success, "{}", f.stdout);
    assert!(!f.stdout.contains("published"), "{}", f.stdout);
    assert!(
        f.stderr.contains(&format!("error: no link to bob at {url} after 1 s")),
        "{}",
        f.stderr
    );
}
