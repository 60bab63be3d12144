//! The pool's listeners, inside the watchers: each listener is a connection of
//! one watcher with accepts pending on it (core's `accept`), re-armed as they
//! complete. What a reuseport listener accepts stays on its watcher; what a
//! balanced listener accepts goes where the balancer says, moved with
//! `detach` + `register` (two `epoll_ctl` calls) when that is another watcher.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use gaio_core::{Completion, Conn, Error, Requests, Result, Watcher};

use crate::route::Ctx;
use crate::{Event, Handler, Inner, Io};

/// Accepts kept pending per listener: a burst of connections is accepted in one
/// turn, up to this many.
pub(crate) const ACCEPT_DEPTH: usize = 64;

/// A nonblocking listener with a 4096 backlog (std's is 128), optionally
/// SO_REUSEPORT.
pub(crate) fn bind(addr: SocketAddr, reuseport: bool) -> Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Hands `listener` to watcher `index` and starts accepting on it.
pub(crate) fn start<C, M>(
    inner: &Inner<C, M>,
    index: usize,
    listener: OwnedFd,
    balanced: bool,
) -> Result<()> {
    if inner.closed.load(Ordering::Acquire) {
        return Err(Error::WatcherClosed);
    }
    let w = &inner.workers[index];
    let tx = &w.tx;
    let conn = tx.register(listener)?;
    w.counters.listeners.fetch_add(1, Ordering::Relaxed);
    // Recorded first, so a shutdown racing with this call still frees it.
    inner
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((index, conn, balanced));
    for _ in 0..ACCEPT_DEPTH {
        tx.accept(conn, Ctx::Accept(balanced))?;
    }
    Ok(())
}

/// One accept of a pool listener completed on the watcher of `io`: announce the
/// connection here or hand it to the balancer's pick, then accept again.
pub(crate) fn accepted<C, M, H: Handler<C, M>>(
    io: &Io<'_, C, M>,
    res: Completion<'_, Ctx<C>>,
    balanced: bool,
    handler: &mut H,
) {
    let inner = &io.pool.inner;
    let listener = res.conn;
    match res.result {
        Ok(()) => {}
        // The listener was freed (shutdown): nothing to re-arm.
        Err(Error::ConnClosed | Error::WatcherClosed) => return,
        Err(e) => {
            // Transient failures and fd exhaustion are handled inside core and
            // never complete an accept: this listener is broken.
            tracing::error!(watcher = io.index, error = %e, "gaio-pool: listener failed; it is closed");
            forget(inner, io.index, listener);
            let _ = io.local.free(listener);
            return;
        }
    }
    if let Some((conn, peer)) = res.accepted() {
        let to = if balanced {
            inner.live_from(inner.pick(peer)).unwrap_or(io.index)
        } else {
            io.index
        };
        if to == io.index {
            let w = &inner.workers[io.index];
            w.counters.accepts.fetch_add(1, Ordering::Relaxed);
            handler.handle(io, Event::Connected { conn, peer });
        } else {
            match io.local.detach(conn) {
                Ok(fd) => {
                    if let Err(e) = inner.dispatch(fd, peer, Some(to), true) {
                        tracing::warn!(error = %e, "gaio-pool: could not hand over a connection; it was closed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "gaio-pool: accepted connection lost"),
            }
        }
    }
    if !inner.closed.load(Ordering::Acquire) {
        let _ = io.local.accept(listener, Ctx::Accept(balanced));
    }
}

/// Watcher `index` is going away (its handler panicked): its listeners move to
/// the next live watcher, so the pool keeps accepting. The sockets are moved,
/// not reopened: connections in their backlogs are kept.
pub(crate) fn rehome<C, M>(index: usize, w: &mut Watcher<Ctx<C>>, inner: &Inner<C, M>) {
    let mine: Vec<(Conn, bool)> = {
        let mut all = inner.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, rest) = all.drain(..).partition(|&(i, _, _)| i == index);
        *all = rest;
        mine.into_iter().map(|(_, l, b)| (l, b)).collect()
    };
    for (listener, balanced) in mine {
        inner.workers[index]
            .counters
            .listeners
            .fetch_sub(1, Ordering::Relaxed);
        let moved = w.local().detach(listener).and_then(|fd| {
            let to = inner.live_from_except(index + 1, Some(index))?;
            start(inner, to, fd, balanced)?;
            Ok(to)
        });
        match moved {
            Ok(to) => tracing::warn!(
                from = index,
                to,
                "gaio-pool: listener moved to a live watcher"
            ),
            Err(e) => {
                tracing::error!(watcher = index, error = %e, "gaio-pool: a listener was lost")
            }
        }
    }
}

/// Drops a failed listener from the pool's list.
fn forget<C, M>(inner: &Inner<C, M>, index: usize, listener: Conn) {
    let mut all = inner.listeners.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(at) = all
        .iter()
        .position(|&(i, l, _)| i == index && l == listener)
    {
        all.swap_remove(at);
        inner.workers[index]
            .counters
            .listeners
            .fetch_sub(1, Ordering::Relaxed);
    }
}
