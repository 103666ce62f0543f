//! A `redis-server` of the bench's own for the `cluster` path, adapted from the test harness
//! (`tests/redis_server/mod.rs`): on a loopback port reserved for as long as it lives, with no
//! persistence (`--save '' --appendonly no`), killed and reaped on drop. Without
//! `redis-server` on the PATH it fails, saying how to install it.
//!
//! # A port without a race
//!
//! Redis cannot be handed a listening socket, nor asked to choose a port and say which. Picking
//! a free port and letting it go before the server binds it would race with every other
//! process, so the port is *kept*: a socket bound to `127.0.0.1:0` with `SO_REUSEADDR` that
//! never listens. The kernel hands that port to no one else, while `redis-server`, which binds
//! with `SO_REUSEADDR` too, may listen on it (Linux lets sockets share a port when all of them
//! set `SO_REUSEADDR` and only one listens).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxError;

/// How long a server may take to answer its first PING (a failure bound, not a pause).
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// What to tell whoever runs the bench without Redis.
const INSTALL: &str = "redis-server is not installed (the cluster path needs a real one): \
                       apt-get install -y redis-server";

/// Fails, saying how to install it, when `redis-server` cannot be run.
pub fn check_installed() -> Result<(), BoxError> {
    match Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(INSTALL.into()),
        Err(e) => Err(format!("cannot run redis-server: {e}").into()),
    }
}

/// A TCP socket bound to a free port of 127.0.0.1 with `SO_REUSEADDR`, never listening: the
/// port stays ours while it lives (see the module's docs). With libc rather than socket2, so
/// the bench adds no dependency.
#[derive(Debug)]
struct Reservation {
    _socket: OwnedFd,
    port: u16,
}

impl Reservation {
    fn new() -> io::Result<Self> {
        let check = |rc: libc::c_int| if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) };
        // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor that
        // nothing else owns, so `OwnedFd` may take it.
        let socket = unsafe {
            let fd = check(libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0))?;
            OwnedFd::from_raw_fd(fd)
        };
        let fd = socket.as_raw_fd();
        let one: libc::c_int = 1;
        // SAFETY: the option value points at a live c_int whose size is passed.
        check(unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        // SAFETY: all-zero is a valid sockaddr_in (port 0, address 0.0.0.0) before we set it.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: the address points at a live sockaddr_in whose size is passed.
        check(unsafe { libc::bind(fd, (&raw const addr).cast(), len) })?;
        // SAFETY: getsockname writes at most `len` bytes into the live sockaddr_in.
        check(unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) })?;
        Ok(Self { _socket: socket, port: u16::from_be(addr.sin_port) })
    }
}

/// A running `redis-server` on a loopback port of its own; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// The reservation of the port (see the module's docs); it never listens.
    _port: Reservation,
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl RedisServer {
    /// Starts a server with no password and no persistence, and waits until it answers a PING.
    pub fn start() -> Result<Self, BoxError> {
        let reservation = Reservation::new()?;
        let port = reservation.port;
        // Unique among concurrent processes: the port is ours alone.
        let dir = std::env::temp_dir().join(format!("peerlink-bench-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| -> BoxError {
                if e.kind() == io::ErrorKind::NotFound {
                    INSTALL.into()
                } else {
                    format!("cannot start redis-server: {e}").into()
                }
            })?;
        let mut server = RedisServer { _port: reservation, port, dir, child };
        server.wait_until_answering()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its process id (to read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    fn wait_until_answering(&mut self) -> Result<(), BoxError> {
        let start = Instant::now();
        loop {
            if self.answers() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "redis-server exited ({status}) before answering; its log:\n{}",
                    self.log()
                )
                .into());
            }
            if start.elapsed() > STARTUP_DEADLINE {
                return Err(format!(
                    "redis-server did not answer within {STARTUP_DEADLINE:?}; its log:\n{}",
                    self.log()
                )
                .into());
            }
            // Between attempts of a readiness poll (bounded above).
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the server answers `PING` with `+PONG`.
    fn answers(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = [0u8; 7];
        tcp.write_all(b"PING\r\n").is_ok()
            && tcp.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
