//! Requests on any pool connection from anywhere: each goes to the watcher that
//! owns its `Conn` (the `Conn` carries that watcher's id). On the owner's own
//! thread that is the [`Local`] hot path; anywhere else it is the owner's
//! [`Submitter`] (one lock-free queue push, and a wake if the owner is parked).
//! Either way the request completes on the owner's thread, at the owner's
//! handler.

use gaio_core::{Local, Submitter};

/// What the pool puts in the core's context slot: the user's value, or a
/// request the pool made itself (the accepts on its listeners).
#[derive(Debug)]
pub(crate) enum Ctx<C> {
    User(C),
    /// An accept on one of the pool's listeners; `true`: the balancer places
    /// what it accepts, `false`: it stays on the accepting watcher (reuseport).
    Accept(bool),
}

/// Where a request on one connection goes.
pub(crate) enum Target<'x, C> {
    /// The owner is the calling watcher: straight into the connection's queue.
    Local(Local<'x, Ctx<C>>),
    /// Another watcher (or the caller is not a watcher): its cross-thread queue.
    Remote(&'x Submitter<Ctx<C>>),
}

/// Calls one request method on the target, wrapping the user's context.
macro_rules! route {
    ($target:expr, $t:ident => $call:expr) => {
        match $target {
            $crate::route::Target::Local($t) => $call,
            $crate::route::Target::Remote($t) => $call,
        }
    };
}

/// The request methods, the same on [`Io`](crate::Io) and
/// [`Handle`](crate::Handle); each type supplies `fn target(&self, Conn)`.
macro_rules! requests {
    () => {
        /// Reads whatever arrives, at least one byte (0 with `Ok` at EOF), into
        /// the owner's swap buffer (`None`) or into `buf` (see
        /// [`gaio_core::Local::read`]).
        ///
        /// # Errors
        /// [`Error::EmptyBuffer`](gaio_core::Error::EmptyBuffer);
        /// [`Error::WatcherClosed`](gaio_core::Error::WatcherClosed) once the
        /// owner stopped; [`Error::ForeignConn`](gaio_core::Error::ForeignConn)
        /// for a `Conn` of no watcher of this pool.
        pub fn read(&self, conn: Conn, ctx: C, buf: Option<Vec<u8>>) -> Result<()> {
            route!(self.target(conn)?, t => t.read(conn, Ctx::User(ctx), buf))
        }

        /// [`read`](Self::read) that ends with
        /// [`Error::Deadline`](gaio_core::Error::Deadline) after `timeout`.
        ///
        /// # Errors
        /// As [`read`](Self::read).
        pub fn read_timeout(
            &self,
            conn: Conn,
            ctx: C,
            buf: Option<Vec<u8>>,
            timeout: Duration,
        ) -> Result<()> {
            route!(self.target(conn)?, t => t.read_timeout(conn, Ctx::User(ctx), buf, timeout))
        }

        /// [`read`](Self::read) that ends with
        /// [`Error::Deadline`](gaio_core::Error::Deadline) at `deadline`.
        ///
        /// # Errors
        /// As [`read`](Self::read).
        pub fn read_deadline(
            &self,
            conn: Conn,
            ctx: C,
            buf: Option<Vec<u8>>,
            deadline: Instant,
        ) -> Result<()> {
            route!(self.target(conn)?, t => t.read_deadline(conn, Ctx::User(ctx), buf, deadline))
        }

        /// Fills all of `buf` (see [`gaio_core::Local::read_full`]).
        ///
        /// # Errors
        /// As [`read`](Self::read).
        pub fn read_full(
            &self,
            conn: Conn,
            ctx: C,
            buf: Vec<u8>,
            deadline: Option<Instant>,
        ) -> Result<()> {
            route!(self.target(conn)?, t => t.read_full(conn, Ctx::User(ctx), buf, deadline))
        }

        /// Writes all of `buf`: a `Vec<u8>`, or an `Arc<[u8]>` shared by many
        /// writes (a broadcast costs one allocation, whichever watchers own the
        /// recipients).
        ///
        /// # Errors
        /// As [`read`](Self::read), and
        /// [`Error::WriteLimit`](gaio_core::Error::WriteLimit) at once on the
        /// owner's thread (from elsewhere the write completes with it).
        pub fn write(&self, conn: Conn, ctx: C, buf: impl Into<WriteBuf>) -> Result<()> {
            route!(self.target(conn)?, t => t.write(conn, Ctx::User(ctx), buf))
        }

        /// [`write`](Self::write) that ends with
        /// [`Error::Deadline`](gaio_core::Error::Deadline) after `timeout`.
        ///
        /// # Errors
        /// As [`write`](Self::write).
        pub fn write_timeout(
            &self,
            conn: Conn,
            ctx: C,
            buf: impl Into<WriteBuf>,
            timeout: Duration,
        ) -> Result<()> {
            route!(self.target(conn)?, t => t.write_timeout(conn, Ctx::User(ctx), buf, timeout))
        }

        /// [`write`](Self::write) that ends with
        /// [`Error::Deadline`](gaio_core::Error::Deadline) at `deadline`.
        ///
        /// # Errors
        /// As [`write`](Self::write).
        pub fn write_deadline(
            &self,
            conn: Conn,
            ctx: C,
            buf: impl Into<WriteBuf>,
            deadline: Instant,
        ) -> Result<()> {
            route!(self.target(conn)?, t => t.write_deadline(conn, Ctx::User(ctx), buf, deadline))
        }

        /// Accepts one connection on a listener the application registered
        /// itself (the pool's own listeners accept by themselves).
        ///
        /// # Errors
        /// As [`read`](Self::read).
        pub fn accept(&self, listener: Conn, ctx: C) -> Result<()> {
            route!(self.target(listener)?, t => t.accept(listener, Ctx::User(ctx)))
        }

        /// Shuts the write side down after the writes before it.
        ///
        /// # Errors
        /// As [`read`](Self::read).
        pub fn shutdown(&self, conn: Conn, ctx: C) -> Result<()> {
            route!(self.target(conn)?, t => t.shutdown(conn, Ctx::User(ctx)))
        }

        /// Closes gracefully: the writes before it go out (until `deadline`),
        /// then the connection closes.
        ///
        /// # Errors
        /// As [`read`](Self::read).
        pub fn close(&self, conn: Conn, ctx: C, deadline: Option<Instant>) -> Result<()> {
            route!(self.target(conn)?, t => t.close(conn, Ctx::User(ctx), deadline))
        }

        /// Frees the connection at its owner's next turn; what is still pending
        /// completes with [`Error::ConnClosed`](gaio_core::Error::ConnClosed).
        ///
        /// # Errors
        /// [`Error::WatcherClosed`](gaio_core::Error::WatcherClosed);
        /// [`Error::ForeignConn`](gaio_core::Error::ForeignConn).
        pub fn free(&self, conn: Conn) -> Result<()> {
            route!(self.target(conn)?, t => t.free(conn))
        }
    };
}

pub(crate) use {requests, route};
