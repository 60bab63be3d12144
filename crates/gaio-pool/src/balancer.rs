//! Choosing a watcher for each new connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Counters;

/// The load of every watcher, as a [`Balancer`] sees it. A view, not a copy:
/// reading it allocates nothing.
pub struct Loads<'a> {
    pub(crate) watchers: &'a [Arc<Counters>],
}

impl std::fmt::Debug for Loads<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Loads<'_> {
    /// Number of watchers (at least 1).
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    /// Always false: a pool has at least one watcher.
    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Connections assigned to watcher `i` and not yet freed.
    pub fn live_conns(&self, i: usize) -> usize {
        self.watchers[i].live_conns()
    }

    /// `(watcher index, live connections)` for every watcher.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.len()).map(|i| (i, self.live_conns(i)))
    }
}

/// Picks the watcher for a new connection. Called on the accepting thread for every
/// connection (and by [`Pool::assign`](crate::Pool::assign)), so it should be cheap
/// and must not block. An index out of range is wrapped (`% len`).
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use gaio_pool::{Balancer, Loads};
///
/// /// Everything to watcher 0 except clients on loopback.
/// struct LoopbackElsewhere;
/// impl Balancer for LoopbackElsewhere {
///     fn pick(&self, peer: Option<SocketAddr>, loads: &Loads<'_>) -> usize {
///         match peer {
///             Some(p) if p.ip().is_loopback() => loads.len() - 1,
///             _ => 0,
///         }
///     }
/// }
/// ```
pub trait Balancer: Send + Sync + 'static {
    /// The index of the watcher that gets a connection from `peer` (`None` when the
    /// address is unknown, e.g. a Unix socket).
    fn pick(&self, peer: Option<SocketAddr>, loads: &Loads<'_>) -> usize;
}

/// Each connection to the next watcher in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(&self, _: Option<SocketAddr>, loads: &Loads<'_>) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % loads.len()
    }
}

/// Each connection to the watcher with the fewest live connections (the lowest
/// index among equals).
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConnections;

impl Balancer for LeastConnections {
    fn pick(&self, _: Option<SocketAddr>, loads: &Loads<'_>) -> usize {
        loads
            .iter()
            .min_by_key(|&(i, n)| (n, i))
            .map_or(0, |(i, _)| i)
    }
}

/// Connections from one client IP address always to the same watcher (the port is
/// ignored), so per-client state can live on one core. Unknown peers go to 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceHash;

impl Balancer for SourceHash {
    fn pick(&self, peer: Option<SocketAddr>, loads: &Loads<'_>) -> usize {
        let Some(peer) = peer else { return 0 };
        // FNV-1a: stable across runs and builds, unlike std's randomised hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        match peer.ip() {
            IpAddr::V4(ip) => eat(&ip.octets()),
            IpAddr::V6(ip) => eat(&ip.octets()),
        }
        (h % loads.len() as u64) as usize
    }
}

/// The built-in balancers by name, for command lines and config files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    /// [`RoundRobin`].
    RoundRobin,
    /// [`LeastConnections`].
    LeastConnections,
    /// [`SourceHash`].
    SourceHash,
}

impl std::str::FromStr for BalancerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" | "rr" => Ok(BalancerKind::RoundRobin),
            "least-conn" | "least-connections" => Ok(BalancerKind::LeastConnections),
            "source-hash" | "hash" => Ok(BalancerKind::SourceHash),
            other => Err(format!(
                "unknown balancer {other:?}: round-robin, least-conn or source-hash"
            )),
        }
    }
}

impl BalancerKind {
    /// A fresh balancer of this kind.
    pub fn build(self) -> Box<dyn Balancer> {
        match self {
            BalancerKind::RoundRobin => Box::new(RoundRobin::default()),
            BalancerKind::LeastConnections => Box::new(LeastConnections),
            BalancerKind::SourceHash => Box::new(SourceHash),
        }
    }
}
