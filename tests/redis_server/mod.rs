//! A real `redis-server` for tests, on a loopback port of its own: started, stopped and started
//! again on the same port (for fault tests), killed and reaped on drop. Without `redis-server`
//! on the PATH the test fails, saying how to install it.
//!
//! # A port without a race
//!
//! Redis cannot be handed a listening socket, nor asked to choose a port and say which
//! (`--port 0` means "no TCP"). Picking a free port and letting it go before the server binds it
//! would race with every other process. Instead the harness *keeps* the port: a socket bound to
//! `127.0.0.1:0` with `SO_REUSEADDR` that never listens ([`Port`]). The kernel then hands that
//! port to no one else (explicit binds fail, and automatic ones, outgoing connections included,
//! skip a port bound this way), while `redis-server`, which binds with `SO_REUSEADDR` too, may
//! listen on it, since Linux lets sockets share a port when all of them set `SO_REUSEADDR` and
//! none but one listens. The reservation lives as long as the harness, so the port stays ours
//! between a stop and the next start, and a stopped server's port refuses connections.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// How long a server may take to answer its first PING (a failure bound, not a pause).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// A loopback TCP port reserved for as long as this lives (see the module's docs).
#[derive(Debug)]
pub struct Port {
    _reservation: Socket,
    port: u16,
}

impl Port {
    /// A port of 127.0.0.1 that nothing listens on, and that no other process will be given.
    pub fn reserve() -> Port {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).expect("bind 127.0.0.1:0");
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        Port { _reservation: socket, port }
    }

    /// The port number.
    pub fn number(&self) -> u16 {
        self.port
    }
}

/// A `redis-server` process (or, between [`RedisServer::stop`] and [`RedisServer::start`], the
/// port and settings of one).
#[derive(Debug)]
pub struct RedisServer {
    port: Port,
    dir: PathBuf,
    args: Vec<String>,
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server with no password, started.
    pub fn start_plain() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with `args` added to the harness's own (`--port`, `--bind 127.0.0.1`,
    /// `--save ''`, `--appendonly no`, and a directory and log file of its own), started. An
    /// argument may be, for instance, `--requirepass` or an ACL `--user` line.
    pub fn start_with(args: &[&str]) -> RedisServer {
        RedisServer::new(args, false)
    }

    /// A TLS-only server (`--port 0 --tls-port …`) with the certificate, key and CA given, and
    /// client certificates not asked for.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let files =
            [cert, key, ca].map(|p| p.canonicalize().expect("a TLS file").display().to_string());
        let args = [
            "--tls-cert-file",
            &files[0],
            "--tls-key-file",
            &files[1],
            "--tls-ca-cert-file",
            &files[2],
            "--tls-auth-clients",
            "no",
        ];
        RedisServer::new(&args, true)
    }

    fn new(args: &[&str], tls: bool) -> RedisServer {
        let port = Port::reserve();
        // Unique among concurrent tests and processes: the port is ours alone.
        let dir = std::env::temp_dir().join(format!("peerlink-redis-{}", port.number()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("the server's directory");
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut server = RedisServer { port, dir, args, tls, child: None };
        server.start();
        server
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port.number()
    }

    /// `redis://127.0.0.1:PORT` (`rediss://localhost:PORT` for TLS, the name its certificate
    /// carries).
    pub fn url(&self) -> String {
        match self.tls {
            false => format!("redis://127.0.0.1:{}", self.port()),
            true => format!("rediss://localhost:{}", self.port()),
        }
    }

    /// `redis://user:password@127.0.0.1:PORT`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port())
    }

    /// Starts the server (again, after [`RedisServer::stop`]) on its port, and waits until it
    /// answers (a PING; for TLS, a TCP connection). Panics if it is already running, exits, or
    /// does not answer within [`STARTUP_DEADLINE`].
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let port = self.port().to_string();
        let mut cmd = Command::new("redis-server");
        match self.tls {
            false => cmd.args(["--port", &port]),
            true => cmd.args(["--port", "0", "--tls-port", &port]),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "redis-server is not installed (the broker tests need a real one): \
                 apt-get install -y redis-server"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        self.wait_until_answering();
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown) and reaps it. Its port stays
    /// reserved, refusing connections until [`RedisServer::start`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the server is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn wait_until_answering(&mut self) {
        let start = Instant::now();
        loop {
            if self.answers() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("redis-server exited ({status}) before answering; its log:\n{}", self.log());
            }
            if start.elapsed() > STARTUP_DEADLINE {
                panic!(
                    "redis-server did not answer within {STARTUP_DEADLINE:?}; its log:\n{}",
                    self.log()
                );
            }
            // Between attempts of a readiness poll (bounded above), not a guess at a duration.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the server answers: `PING` gets `+PONG` (or `-NOAUTH`: it answers, but wants a
    /// password); for TLS, a TCP connection is accepted (the listener exists; a client's
    /// handshake then waits in its backlog at worst).
    fn answers(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()));
        let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        if self.tls {
            return true;
        }
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = [0u8; 7];
        tcp.write_all(b"PING\r\n").is_ok()
            && tcp.read_exact(&mut answer).is_ok()
            && (&answer == b"+PONG\r\n" || &answer == b"-NOAUTH")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
