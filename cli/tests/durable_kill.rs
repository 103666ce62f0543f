//! Durability with real processes and `kill -9` (spec §26): a `peerlink send --stdin
//! --storage redb` sender is killed with hundreds of messages accepted and undelivered, and the
//! next run in its data directory delivers every one of them, once, in order, while the relay
//! between the two is killed and started again mid-stream. The receiver (bob) runs in this
//! process on smol. A receiver killed mid-stream continues where it was; a relay on redb killed
//! with messages in its mailbox, their sender gone, delivers them after its restart.

mod cluster_support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use cluster_support::{DEADLINE, log_if_asked, temp_dir};
use peerlink_core::node::NodeConfig;
use peerlink_core::rate_limit::RateLimit;
use peerlink_core::{EntityId, Event, Identity, MessageType, PublicKey};
use peerlink_smol::{Config, Peerlink, TrustedPeer};

/// How many messages the sender accepts before it is killed.
const MESSAGES: usize = 300;

/// A `peerlink` process, killed (SIGKILL) when dropped, with its standard output as lines.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    stderr: PathBuf,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// `peerlink ARGS` with `PEERLINK_HOME=home`; standard input piped if `stdin`.
    fn start(name: &str, home: &Path, args: &[&str], stdin: bool) -> Proc {
        let stderr = home.join(format!("{name}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_peerlink"))
            .args(args)
            .env("PEERLINK_HOME", home)
            .env("RUST_LOG", "peerlink_host=info")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
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
        Proc { child, lines, stderr, name: name.to_owned() }
    }

    /// The first line for which `pick` says something, within the deadline.
    fn line<T>(&self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let start = std::time::Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(t) = pick(&l) {
                        return t;
                    }
                }
                Err(_) => panic!(
                    "{}: no {what} within {DEADLINE:?}; stderr:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }

    /// The value of a `name  value` line.
    fn field(&self, name: &str) -> String {
        self.line(name, |l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().to_owned())
        })
    }

    /// Kills it with SIGKILL; returns the lines it printed that were not read yet (to the last).
    fn kill9(mut self) -> Vec<String> {
        let status = Command::new("kill").arg("-KILL").arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()));
        let _ = self.child.wait();
        // The reader thread ends at the end of the pipe.
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(DEADLINE) {
            rest.push(l);
        }
        rest
    }
}

/// A relay (`peerlink serve --storage STORAGE`) on `port` that knows `peers` (`(id, key)`),
/// with link rates far above the default; returns it with its entity id and public key.
fn relay(home: &Path, port: u16, peers: &[(&str, &str)], storage: &str) -> (Proc, String, String) {
    relay_with(home, port, peers, storage, "")
}

/// [`relay`], with `extra` added to its configuration file (whole tables).
fn relay_with(
    home: &Path,
    port: u16,
    peers: &[(&str, &str)],
    storage: &str,
    extra: &str,
) -> (Proc, String, String) {
    let config = home.join("peerlink.toml");
    let mut toml = String::from("[limits]\nframes_per_minute = 1000000\n");
    toml.push_str(extra);
    for (id, key) in peers {
        toml.push_str(&format!("[[peers]]\nentity_id = \"{id}\"\npublic_key = \"{key}\"\n"));
    }
    std::fs::write(&config, toml).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--config", config.to_str().unwrap(), "serve", "--storage", storage];
    let p = Proc::start("relay", home, &[&args[..], &["--listen", &listen]].concat(), false);
    let id = p.field("entity_id");
    let key = p.field("public_key");
    p.field("url");
    (p, id, key)
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What bob's application received, in order.
#[derive(Clone, Default)]
struct Inbox(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Inbox {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Two entities and a relay that knows both: one entity runs as a `peerlink` process in its
/// own home (`proc_home`, its identity made with `peerlink keygen`), the other in this process.
struct World {
    dir: PathBuf,
    relay_home: PathBuf,
    proc_home: PathBuf,
    port: u16,
    relay_id: String,
    relay_key: String,
    url: String,
    proc_key: String,
    local: Identity,
    local_key: String,
}

impl World {
    /// The world, and the relay's process (with a store of kind `storage`).
    fn new(test: &str, proc_name: &str, local_name: &str, storage: &str) -> (World, Proc) {
        Self::new_with(test, proc_name, local_name, storage, "")
    }

    /// [`World::new`], with `relay_extra` in the relay's configuration file.
    fn new_with(
        test: &str,
        proc_name: &str,
        local_name: &str,
        storage: &str,
        relay_extra: &str,
    ) -> (World, Proc) {
        log_if_asked();
        let dir = temp_dir(test);
        let (relay_home, proc_home) = (dir.join("relay"), dir.join(proc_name));
        std::fs::create_dir_all(&relay_home).unwrap();
        std::fs::create_dir_all(&proc_home).unwrap();
        let keygen = Proc::start("keygen", &proc_home, &["keygen", "--id", proc_name], false);
        let proc_key = keygen.field("public_key");
        drop(keygen);
        let local = peerlink_smol::keys::generate(EntityId::new(local_name).unwrap()).unwrap();
        let local_key = local.public_key().to_b64u();
        let port = free_port();
        let peers = [(proc_name, proc_key.as_str()), (local_name, local_key.as_str())];
        let (relay, relay_id, relay_key) =
            relay_with(&relay_home, port, &peers, storage, relay_extra);
        let url = format!("http://127.0.0.1:{port}");
        let world = World {
            dir,
            relay_home,
            proc_home,
            port,
            relay_id,
            relay_key,
            url,
            proc_key,
            local,
            local_key,
        };
        (world, relay)
    }

    /// The peers the relay knows, as [`relay`] takes them.
    fn peers<'a>(&'a self, proc_name: &'a str, local_name: &'a str) -> [(&'a str, &'a str); 2] {
        [(proc_name, self.proc_key.as_str()), (local_name, self.local_key.as_str())]
    }

    /// The in-process node's configuration: through the relay, trusting `peer` with `key`.
    fn local_config(&self, peer: &str, key: &str) -> Config {
        let mut cfg = Config::ephemeral();
        let mut n = NodeConfig::default();
        n.reconnect.initial = Duration::from_millis(100);
        n.reconnect.max = Duration::from_millis(400);
        n.link_rate = RateLimit::per_minute(1_000_000);
        cfg.node = n;
        cfg.relay = Some(TrustedPeer {
            entity: EntityId::new(&self.relay_id).unwrap(),
            key: PublicKey::from_b64u(&self.relay_key).unwrap(),
            url: Some(self.url.clone()),
        });
        cfg.peers = vec![TrustedPeer {
            entity: EntityId::new(peer).unwrap(),
            key: PublicKey::from_b64u(key).unwrap(),
            url: None,
        }];
        cfg
    }

    /// `--relay URL --relay-id ID --relay-key KEY`.
    fn relay_args(&self) -> Vec<&str> {
        vec!["--relay", &self.url, "--relay-id", &self.relay_id, "--relay-key", &self.relay_key]
    }
}

fn store_check(home: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peerlink"))
        .args(["store", "check"])
        .env("PEERLINK_HOME", home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The outbox frames `peerlink store check` counted.
fn outbox_frames(report: &str) -> u64 {
    entries_of(report, "outbox frames")
}

/// The entries of the kind named `what` that `peerlink store check` counted.
fn entries_of(report: &str, what: &str) -> u64 {
    report
        .lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().rev().nth(3)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_sender_killed_with_hundreds_accepted_delivers_them_all_after_a_restart() {
    let (w, relay_proc) = World::new("durable-kill", "alice", "bob", "memory");
    let (alice_home, relay_home, port) = (&w.proc_home, &w.relay_home, w.port);
    let (relay_id, alice_key) = (&w.relay_id, &w.proc_key);
    let bob_key = w.local_key.clone();
    let peers = w.peers("alice", "bob");
    let send: Vec<&str> = [
        &["send", "--to", "bob", "--key", &bob_key][..],
        &w.relay_args(),
        &["--storage", "redb", "--stdin"],
    ]
    .concat();

    // Bob is not running: the sender accepts (stores) every message and can deliver none.
    let mut alice = Proc::start("alice-1", alice_home, &send, true);
    {
        let mut stdin = alice.child.stdin.take().unwrap();
        for i in 0..MESSAGES {
            writeln!(stdin, "m-{i}").unwrap();
        }
        // Left open: the sender waits for more.
        std::mem::forget(stdin);
    }
    alice.line("the last acceptance", |l| {
        l.starts_with(&format!("accepted {MESSAGES} ")).then_some(())
    });
    alice.kill9();
    let report = store_check(alice_home);
    assert_eq!(outbox_frames(&report), MESSAGES as u64, "the store holds them all:\n{report}");

    smol::block_on(async {
        let bob_node =
            Peerlink::start(w.local_config("alice", alice_key), w.local.duplicate()).await.unwrap();
        let inbox = Inbox::default();
        let into = inbox.clone();
        bob_node
            .on_message(MessageType::PeerMessage, move |e| {
                if let Event::Message { payload, .. } = e {
                    into.0.lock().unwrap().push(payload.clone());
                    // A slow application (on bob's node task): the stream is still flowing
                    // when the relay is killed.
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
            .await
            .unwrap();

        // The next run, with nothing new to send, delivers what the first one accepted.
        let alice = Proc::start("alice-2", alice_home, &send, false);
        // Mid-stream, the relay is killed and started again on the same port.
        within("a third of the messages", async {
            while inbox.len() < MESSAGES / 3 {
                smol::Timer::after(Duration::from_millis(5)).await;
            }
        })
        .await;
        relay_proc.kill9();
        let at_kill = inbox.len();
        assert!(at_kill < MESSAGES, "the relay died mid-stream ({at_kill} delivered before)");
        let (relay_again, id_again, _) = relay(relay_home, port, &peers, "memory");
        assert_eq!(&id_again, relay_id);
        let done = smol::unblock(move || {
            let line = alice.line("done", |l| l.strip_prefix("done: ").map(str::to_owned));
            (line, alice)
        })
        .await;
        assert_eq!(done.0, format!("{MESSAGES} delivered, 0 failed"));
        smol::Timer::after(Duration::from_millis(500)).await;
        let got = inbox.0.lock().unwrap().clone();
        let want: Vec<Vec<u8>> = (0..MESSAGES).map(|i| format!("m-{i}").into_bytes()).collect();
        assert_eq!(got.len(), MESSAGES, "each message once");
        assert!(got == want, "in order");
        bob_node.shutdown().await.unwrap();
        drop(relay_again);
    });
    let report = store_check(alice_home);
    assert_eq!(outbox_frames(&report), 0, "delivered messages leave the store:\n{report}");
    let _ = std::fs::remove_dir_all(&w.dir);
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    use smol::future::FutureExt as _;
    f.or(async {
        smol::Timer::after(DEADLINE).await;
        panic!("timed out after {DEADLINE:?} waiting for {what}")
    })
    .await
}

/// The message numbers of `alice\tm-N` lines (`N` may be followed by anything but a digit).
fn numbers(lines: &[String]) -> Vec<usize> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("alice\tm-")?;
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            rest.get(..digits)?.parse().ok()
        })
        .collect()
}

#[test]
fn a_receiver_killed_mid_stream_loses_nothing_and_repeats_at_most_its_last_round() {
    let (w, _relay) = World::new("durable-receiver", "bob", "alice", "memory");
    let (bob_home, bob_key) = (&w.proc_home, &w.proc_key);
    let listen: Vec<&str> = [
        &["listen", "--open", "--listen", "127.0.0.1:0"][..],
        &w.relay_args(),
        &["--storage", "redb"],
    ]
    .concat();
    let bob = Proc::start("bob-1", bob_home, &listen, false);
    bob.field("url");

    smol::block_on(async {
        let node =
            Peerlink::start(w.local_config("bob", bob_key), w.local.duplicate()).await.unwrap();
        let events = node.incoming().await.unwrap();
        let to = EntityId::new("bob").unwrap();
        for i in 0..MESSAGES {
            let payload = format!("m-{i}").into_bytes();
            let options = peerlink_core::node::SendOptions::default();
            node.send_message(&to, MessageType::PeerMessage, payload, options).await.unwrap();
        }
        // Bob prints what his application takes; he is killed a third of the way through.
        let first = smol::unblock(move || {
            let mut lines = Vec::new();
            while lines.len() < MESSAGES / 3 {
                lines.push(
                    bob.line("a message", |l| l.starts_with("alice\t").then(|| l.to_owned())),
                );
            }
            // What it printed before it died, to the last line.
            lines.extend(bob.kill9().into_iter().filter(|l| l.starts_with("alice\t")));
            lines
        })
        .await;
        let bob = Proc::start("bob-2", bob_home, &listen, false);
        let (second, bob) = smol::unblock(move || {
            let mut lines = Vec::new();
            loop {
                let l = bob.line("a message", |l| l.starts_with("alice\t").then(|| l.to_owned()));
                let last = l == format!("alice\tm-{}", MESSAGES - 1);
                lines.push(l);
                if last {
                    // Bob keeps running: his acknowledgements are still to go out.
                    return (lines, bob);
                }
            }
        })
        .await;
        let (first, second) = (numbers(&first), numbers(&second));
        assert_eq!(first, (0..first.len()).collect::<Vec<_>>(), "bob-1: in order from m-0");
        let k = second[0];
        assert_eq!(second, (k..MESSAGES).collect::<Vec<_>>(), "bob-2: in order to the end");
        assert!(k <= first.len(), "nothing lost between the two runs (bob-2 began at m-{k})");
        let repeated = first.len() - k;
        // Only what the dead run's application took after its last committed position may come
        // again: at most one send window (128 frames), since acknowledgements wait for that
        // position and the sender stops at a window of unacknowledged frames.
        let window = NodeConfig::default().stream.send_window;
        assert!(repeated as u64 <= window, "{repeated} messages repeated");
        // Every message is reported delivered to alice, none failed.
        let mut delivered = 0;
        within("every delivery", async {
            while delivered < MESSAGES {
                match events.recv().await.unwrap() {
                    Event::Delivered { .. } => delivered += 1,
                    e @ Event::Failed { .. } => panic!("{e:?} after {delivered} delivered"),
                    _ => {}
                }
            }
        })
        .await;
        node.shutdown().await.unwrap();
        drop(bob);
    });
    let _ = std::fs::remove_dir_all(&w.dir);
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(p: &Proc, signal: &str) {
    let status =
        Command::new("kill").arg(format!("-{signal}")).arg(p.child.id().to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{signal}");
}

/// The samples of the relay's `GET /metrics` named `name` (labels included), summed.
fn metric(port: u16, name: &str) -> u64 {
    use std::io::Read as _;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A relay on redb is killed (SIGKILL) while its mailbox holds messages for a recipient that
/// is not polling (stopped with SIGSTOP) and whose sender has gone for good, its outbox with it:
/// only the relay holds them. Its next run, on the same store and port, delivers every one of
/// them once, in order, when the recipient polls again.
#[test]
fn a_relay_killed_with_messages_in_its_mailbox_delivers_them_after_its_restart() {
    const HELD: usize = 30;
    // Messages of 100 kB and HTTP answers of at most 400 kB: one answer carries at most two
    // envelopes, so the few requests Bob may still have under way when he stops cannot empty
    // the mailbox. (A body holds a frame of the largest size and its 4-byte framing.)
    const SMALL: &str = "[transport.websocket]\nmax_frame_bytes = 399996\n\
                         [transport.http]\nmax_body_bytes = 400000\n";
    let padding = "x".repeat(100_000);
    let (w, relay_proc) = World::new_with("durable-relay", "bob", "alice", "redb", SMALL);
    let peers = w.peers("bob", "alice");
    let bob_config = w.proc_home.join("bob.toml");
    std::fs::write(&bob_config, "[transport]\npreference = \"HTTP_ONLY\"\n").unwrap();
    let listen: Vec<&str> = [
        &["--config", bob_config.to_str().unwrap(), "listen", "--open"][..],
        &["--listen", "127.0.0.1:0", "--storage", "memory"],
        &w.relay_args(),
    ]
    .concat();
    let bob = Proc::start("bob", &w.proc_home, &listen, false);
    bob.field("url");

    let bob = smol::block_on(async {
        let alice =
            Peerlink::start(w.local_config("bob", &w.proc_key), w.local.duplicate()).await.unwrap();
        let events = alice.incoming().await.unwrap();
        let to = EntityId::new("bob").unwrap();
        let send = |i: usize| {
            let options = peerlink_core::node::SendOptions::default();
            let payload = format!("m-{i}|{padding}").into_bytes();
            alice.send_message(&to, MessageType::PeerMessage, payload, options)
        };
        // A session with Bob, proved by a delivery.
        send(0).await.unwrap();
        within("m-0 delivered", async {
            loop {
                match events.recv().await.unwrap() {
                    Event::Delivered { .. } => break,
                    e @ Event::Failed { .. } => panic!("{e:?}"),
                    _ => {}
                }
            }
        })
        .await;
        // Bob stops polling; Alice sends, and goes away with her outbox.
        signal(&bob, "STOP");
        for i in 1..=HELD {
            send(i).await.unwrap();
        }
        alice.shutdown().await.unwrap();
        // Her link closes after the frames it carried: once the relay has no link left, it has
        // taken all of them, and (the metrics of a durable node answer after the commits of what
        // came before) stored them: in the mailbox, but for the few in answers to requests Bob
        // had under way when he stopped, which wait unread in his socket.
        within("the relay to take every frame", async {
            while metric(w.port, "peerlink_links") > 0 {
                smol::Timer::after(Duration::from_millis(20)).await;
            }
        })
        .await;
        bob
    });
    relay_proc.kill9();
    let report = store_check(&w.relay_home);
    let stored = entries_of(&report, "mailbox entries");
    assert!(stored >= HELD as u64 / 2, "the relay's store holds the mailbox:\n{report}");

    let (relay_again, _, _) = relay(&w.relay_home, w.port, &peers, "redb");
    signal(&bob, "CONT");
    let mut lines = Vec::new();
    loop {
        let l = bob.line("a message", |l| l.starts_with("alice\t").then(|| l.to_owned()));
        let last = numbers(std::slice::from_ref(&l)) == [HELD];
        lines.push(l);
        if last {
            break;
        }
    }
    assert_eq!(numbers(&lines), (0..=HELD).collect::<Vec<_>>(), "each once, in order");
    drop(bob);
    drop(relay_again);
    let _ = std::fs::remove_dir_all(&w.dir);
}
