//! Listener threads: accept, pick a watcher, hand the connection over.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use gaio_core::{Error, Result};
use gaio_sys::{AcceptError, Events, Poller, Waker};

use crate::Inner;

const LISTENER: u64 = 0;
const WAKE: u64 = 1;
/// First and longest pause after running out of fds (EMFILE/ENFILE) or memory.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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

pub(crate) struct Acceptor {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl Acceptor {
    /// Starts a thread accepting on `listener` for watcher `to` (or the balancer's
    /// pick), pinned to `core` if given.
    pub(crate) fn spawn<C: Send + 'static>(
        listener: TcpListener,
        to: Option<usize>,
        core: Option<usize>,
        inner: Arc<Inner<C>>,
    ) -> Result<Acceptor> {
        let poller = Poller::new()?;
        poller.register(listener.as_fd(), LISTENER)?;
        let waker = Arc::new(Waker::new(&poller, WAKE)?);
        let stop = Arc::new(AtomicBool::new(false));
        let name = match to {
            Some(i) => format!("gaio-accept{i}"),
            None => "gaio-accept".to_string(),
        };
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Some(c) = core {
                    if let Err(e) = gaio_sys::pin_current_thread(c) {
                        tracing::warn!(core = c, error = %e, "gaio-pool: could not pin acceptor");
                    }
                }
                accept_loop(&listener, &poller, &st, to, &inner);
            })
            .map_err(Error::Io)?;
        Ok(Acceptor {
            stop,
            waker,
            thread,
        })
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

fn accept_loop<C>(
    listener: &TcpListener,
    poller: &Poller,
    stop: &AtomicBool,
    to: Option<usize>,
    inner: &Inner<C>,
) {
    let mut events = Events::with_capacity(4);
    // Some(pause) while out of fds: the listener is edge-triggered, so the queued
    // connections raise no new event; retry after the pause instead of spinning.
    let mut backoff: Option<Duration> = None;
    loop {
        if let Err(e) = poller.wait(&mut events, backoff) {
            tracing::error!(error = %e, "gaio-pool: acceptor poll failed");
            return;
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        loop {
            match gaio_sys::accept(listener.as_fd()) {
                Ok((fd, peer)) => {
                    if backoff.take().is_some() {
                        tracing::info!("gaio-pool: accepting again");
                    }
                    match inner.dispatch(fd, peer, to, true) {
                        Ok(_) => {}
                        Err(Error::WatcherClosed) if inner.closed.load(Ordering::Acquire) => return,
                        // The connection is closed; the listener keeps serving.
                        Err(e) => {
                            tracing::warn!(error = %e, "gaio-pool: could not hand over a connection")
                        }
                    }
                }
                Err(e) => match AcceptError::of(&e) {
                    AcceptError::WouldBlock => {
                        backoff = None; // drained: wait for the next edge, not a timer
                        break;
                    }
                    AcceptError::Exhausted => {
                        // Log once per burst; keep serving existing connections.
                        let next = match backoff {
                            None => {
                                tracing::warn!(error = %e, "gaio-pool: accept failed, backing off");
                                BACKOFF_MIN
                            }
                            Some(b) => (b * 2).min(BACKOFF_MAX),
                        };
                        backoff = Some(next);
                        break;
                    }
                    // The client gave up before we accepted: nothing to do.
                    AcceptError::Transient => {}
                    AcceptError::Fatal => {
                        tracing::warn!(error = %e, "gaio-pool: accept failed");
                        backoff = Some(backoff.map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX)));
                        break;
                    }
                },
            }
        }
    }
}
