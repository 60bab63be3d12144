//! The readiness driver: edge-triggered epoll (Linux) or kqueue (BSD, macOS)
//! through gaio-sys. Readiness is reported as events; transfers are attempted at
//! once and come back `WouldBlock` when the fd is not ready.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;
use std::time::Duration;

use gaio_sys::{Events, Poller};

use crate::conn::{Token, WAKE_TOKEN};

/// What an event says about one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub token: Token,
    pub readable: bool,
    pub writable: bool,
    /// Peer hang-up or a pending error: no later edge will announce it.
    pub hup: bool,
}

#[derive(Debug)]
pub(crate) struct Driver {
    poller: Poller,
    events: Events,
    pub syscalls: u64,
}

impl Driver {
    pub fn new(events: usize) -> io::Result<Driver> {
        Ok(Driver {
            poller: Poller::new()?,
            events: Events::with_capacity(events),
            syscalls: 0,
        })
    }

    pub fn poller(&self) -> &Poller {
        &self.poller
    }

    pub fn register(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.syscalls += 1;
        self.poller.register(fd, token)
    }

    pub fn deregister(&mut self, fd: BorrowedFd<'_>) {
        // Explicitly: a dup of the fd elsewhere would keep the registration (and
        // its events) alive past close. Failure means it is gone already.
        let _ = self.poller.deregister(fd);
        self.syscalls += 1;
    }

    /// Waits for readiness; returns whether any connection (not just the waker)
    /// reported something.
    #[inline]
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.syscalls += 1;
        self.poller.wait(&mut self.events, timeout)?;
        Ok(!self.events.is_empty())
    }

    /// The connections the last `poll` reported.
    #[inline]
    pub fn events(&self) -> impl Iterator<Item = Ready> + '_ {
        self.events
            .iter()
            .filter(|ev| ev.token() != WAKE_TOKEN)
            .map(|ev| Ready {
                token: Token::decode(ev.token()),
                readable: ev.is_readable(),
                writable: ev.is_writable(),
                hup: ev.is_read_closed() || ev.is_error(),
            })
    }

    #[inline]
    pub fn read(&mut self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        self.syscalls += 1;
        gaio_sys::read(fd, buf)
    }

    /// Writes `bufs` in order: `send`/`sendv` on a socket (never `SIGPIPE`),
    /// `write`/`writev` on anything else.
    #[inline]
    pub fn write(
        &mut self,
        fd: BorrowedFd<'_>,
        socket: bool,
        bufs: &[IoSlice<'_>],
    ) -> io::Result<usize> {
        self.syscalls += 1;
        match (bufs, socket) {
            ([one], true) => gaio_sys::send(fd, one),
            ([one], false) => gaio_sys::write(fd, one),
            (many, true) => gaio_sys::sendv(fd, many),
            (many, false) => gaio_sys::writev(fd, many),
        }
    }
}
