//! rtpproxy protocol listeners: UDP and unix datagram (cookie framing, reply cache for
//! retransmissions, source ACL on UDP) and unix stream (no cookie, one command per line), plus
//! the timeout notifier.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixDatagram, UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};

use super::handler::Handler;
use super::proto::{self, Framing, MAX_COMMAND_LEN};
use super::rcache::ReplyCache;
use crate::config::ListenSpec;
use crate::metrics::{Protocol, Rejection};
use crate::session::SessionEvent;

/// A bound listener, before serving (binding first lets the daemon fail at startup).
pub enum Listener {
    Udp(UdpSocket),
    Unix(UnixListener, PathBuf),
    UnixDgram(UnixDatagram, PathBuf),
}

impl Listener {
    pub async fn bind(spec: &ListenSpec) -> std::io::Result<Listener> {
        Ok(match spec {
            ListenSpec::Udp(addr) => Listener::Udp(UdpSocket::bind(addr).await?),
            ListenSpec::Unix(path) => {
                remove_stale(path)?;
                Listener::Unix(UnixListener::bind(path)?, path.clone())
            }
            ListenSpec::UnixDgram(path) => {
                remove_stale(path)?;
                Listener::UnixDgram(UnixDatagram::bind(path)?, path.clone())
            }
        })
    }

    pub fn local_description(&self) -> String {
        match self {
            Listener::Udp(s) => s
                .local_addr()
                .map_or_else(|_| "udp:?".into(), |a| format!("udp:{a}")),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
            Listener::UnixDgram(_, p) => format!("unix-dgram:{}", p.display()),
        }
    }

    /// UDP listener's bound address (tests bind port 0).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Udp(s) => s.local_addr().ok(),
            _ => None,
        }
    }

    /// Moves the socket to the reactor of the runtime this runs on: bound on the daemon's
    /// runtime (so a taken address fails startup), it is served on the session core's, where
    /// readiness must be reported by that runtime's own driver, not by another thread's.
    fn register_here(self) -> std::io::Result<Listener> {
        Ok(match self {
            Listener::Udp(s) => Listener::Udp(UdpSocket::from_std(s.into_std()?)?),
            Listener::Unix(l, path) => Listener::Unix(UnixListener::from_std(l.into_std()?)?, path),
            Listener::UnixDgram(s, path) => {
                Listener::UnixDgram(UnixDatagram::from_std(s.into_std()?)?, path)
            }
        })
    }

    /// Serves until `stop` turns true, on the runtime it is spawned on (the daemon spawns it on
    /// the session core's, so a command reaches the core and returns without a thread hop).
    pub async fn serve(
        self,
        handler: Arc<Handler>,
        acl: Arc<Acl>,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match self.register_here()? {
            Listener::Udp(socket) => {
                serve_datagrams(DatagramSocket::Udp(socket), handler, Some(acl), stopped).await
            }
            Listener::UnixDgram(socket, path) => {
                // File permissions guard unix sockets; the ACL is for network sources.
                let result =
                    serve_datagrams(DatagramSocket::Unix(socket), handler, None, stopped).await;
                let _ = std::fs::remove_file(&path);
                result
            }
            Listener::Unix(listener, path) => {
                let result = serve_stream(listener, handler, stopped).await;
                let _ = std::fs::remove_file(&path);
                result
            }
        }
    }
}

/// Source-address ACL for the UDP listeners.
#[derive(Debug)]
pub struct Acl {
    allow: Vec<ipnet::IpNet>,
    pub denied: AtomicU64,
}

impl Acl {
    pub fn new(allow: Vec<ipnet::IpNet>) -> Acl {
        Acl {
            allow,
            denied: AtomicU64::new(0),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4 client reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ok = self.allow.iter().any(|net| net.contains(&ip));
        if !ok {
            let n = self.denied.fetch_add(1, Relaxed);
            // Log the first and then every 1000th, not every packet of a scan.
            if n.is_multiple_of(1000) {
                tracing::warn!(%ip, denied_total = n + 1, "rtpproxy command from a source outside rtpproxy.allow dropped");
            }
        }
        ok
    }
}

enum DatagramSocket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PeerAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl DatagramSocket {
    /// `None` for a unix peer without a name: there is nowhere to answer.
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<Option<(usize, PeerAddr)>> {
        Ok(match self {
            DatagramSocket::Udp(s) => {
                let (n, addr) = s.recv_from(buf).await?;
                Some((n, PeerAddr::Inet(addr)))
            }
            DatagramSocket::Unix(s) => {
                let (n, addr) = s.recv_from(buf).await?;
                addr.as_pathname()
                    .map(|p| (n, PeerAddr::Unix(p.to_owned())))
            }
        })
    }

    async fn send_to(&self, data: &[u8], peer: &PeerAddr) -> std::io::Result<usize> {
        match (self, peer) {
            (DatagramSocket::Udp(s), PeerAddr::Inet(addr)) => s.send_to(data, addr).await,
            (DatagramSocket::Unix(s), PeerAddr::Unix(path)) => s.send_to(data, path).await,
            _ => Ok(0),
        }
    }
}

struct Pending {
    cache: ReplyCache<(PeerAddr, String)>,
    in_flight: HashSet<(PeerAddr, String)>,
}

async fn serve_datagrams(
    socket: DatagramSocket,
    handler: Arc<Handler>,
    acl: Option<Arc<Acl>>,
    stopped: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let pending = Arc::new(Mutex::new(Pending {
        cache: ReplyCache::default(),
        in_flight: HashSet::new(),
    }));
    // Larger than the protocol limit so an over-long command is seen (and refused) whole.
    let mut buf = vec![0u8; MAX_COMMAND_LEN + 1024];
    tokio::pin!(stopped);
    loop {
        let (n, peer) = tokio::select! {
            () = &mut stopped => return Ok(()),
            r = socket.recv_from(&mut buf) => match r {
                Ok(Some(x)) => x,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "rtpproxy listener receive error");
                    continue;
                }
            },
        };
        if let (Some(acl), PeerAddr::Inet(addr)) = (&acl, &peer)
            && !acl.allows(addr.ip())
        {
            handler.metrics().rejected(Protocol::Rtpp, Rejection::Acl);
            continue;
        }
        let request = match proto::parse(&buf[..n], Framing::Datagram) {
            Ok(r) => r,
            Err(e) => {
                handler.malformed();
                tracing::debug!(code = %e.code, "malformed rtpproxy command");
                // Without a cookie the client cannot match a reply; answer anyway, it costs
                // nothing and helps someone typing commands by hand.
                let _ = socket.send_to(e.reply().as_bytes(), &peer).await;
                continue;
            }
        };
        let cookie = request.cookie.clone().unwrap_or_default();
        let key = (peer.clone(), cookie.clone());
        let cached = {
            let mut p = pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let cached = p.cache.get(&key, Instant::now()).map(str::to_owned);
            // A retransmission of a command still executing: its reply answers both.
            if cached.is_none() && !p.in_flight.insert(key.clone()) {
                handler.metrics().retransmission(Protocol::Rtpp);
                continue;
            }
            cached
        };
        if let Some(reply) = cached {
            handler.counters.replayed.fetch_add(1, Relaxed);
            handler.metrics().retransmission(Protocol::Rtpp);
            let _ = socket.send_to(reply.as_bytes(), &peer).await;
            continue;
        }
        let (socket, handler, pending) = (socket.clone(), handler.clone(), pending.clone());
        tokio::spawn(async move {
            let reply = handler
                .execute(request.command)
                .await
                .encode(Some(cookie.as_str()));
            // Cached before it is sent: a client that retransmits the moment it has this reply
            // must find it in the cache, not the command still marked in flight (which drops
            // the retransmission unanswered).
            {
                let mut p = pending
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                p.in_flight.remove(&key);
                p.cache.insert(key, reply.clone(), Instant::now());
            }
            if let Err(e) = socket.send_to(reply.as_bytes(), &peer).await {
                tracing::debug!(error = %e, "cannot send rtpproxy reply");
            }
        });
    }
}

async fn serve_stream(
    listener: UnixListener,
    handler: Arc<Handler>,
    stopped: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(stopped);
    loop {
        let stream = tokio::select! {
            () = &mut stopped => return Ok(()),
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "rtpproxy unix listener accept error");
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, handler).await {
                tracing::debug!(error = %e, "rtpproxy unix connection ended");
            }
        });
    }
}

/// One command per line (or per connection, as Kamailio's `unix:` mode writes one command and
/// reads one reply); no cookie.
async fn serve_connection(stream: UnixStream, handler: Arc<Handler>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        // Bounded: a client that never sends a newline cannot grow the buffer past the limit.
        let n = (&mut reader)
            .take(MAX_COMMAND_LEN as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let reply = match proto::parse(&line, Framing::Stream) {
            Ok(request) => handler.execute(request.command).await.encode(None),
            Err(e) => {
                handler.malformed();
                e.reply()
            }
        };
        write.write_all(reply.as_bytes()).await?;
        if line.len() > MAX_COMMAND_LEN {
            // The rest of an over-long line would be parsed as garbage commands.
            return Ok(());
        }
    }
}

fn remove_stale(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `tag\n` to the configured notify socket when a session that asked for it times out
/// (rtpproxy `-n`; the format Kamailio's `timeout_socket` / OpenSIPS's notification listener
/// read). The target is always the configured one: a control client cannot make the relay
/// connect elsewhere.
pub async fn notifier(target: String, mut events: broadcast::Receiver<SessionEvent>) {
    loop {
        let notify = match events.recv().await {
            Ok(SessionEvent::Ended {
                notify: Some(n), ..
            }) => n,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "timeout notifier fell behind; notifications lost"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let line = format!("{}\n", notify.tag);
        let result = if let Some(path) = target.strip_prefix("unix:") {
            match UnixStream::connect(path).await {
                Ok(mut s) => s.write_all(line.as_bytes()).await,
                Err(e) => Err(e),
            }
        } else if let Some(addr) = target.strip_prefix("tcp:") {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(mut s) => s.write_all(line.as_bytes()).await,
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(%target, error = %e, "cannot deliver timeout notification");
        }
    }
}
