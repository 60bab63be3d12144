//! Requests on any pool connection from anywhere: each goes to the watcher that
//! owns its `Conn` (the `Conn` carries that watcher's id). On the owner's own
//! thread that is the [`Local`] hot path; anywhere else it is the owner's
//! [`Submitter`] (one lock-free queue push, and a wake if the owner is parked).
//! Either way the request completes on the owner's thread, at the owner's
//! handler. [`Io`](crate::Io) and [`Handle`](crate::Handle) implement
//! [`Requests`] by finding the target and passing the request on.

use gaio_core::{Conn, Local, Request, Requests, Result, Submitter};

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

impl<C> Target<'_, C> {
    /// Passes the user's request on, its context wrapped as the user's.
    #[inline]
    pub(crate) fn submit(self, conn: Conn, req: Request<C>) -> Result<()> {
        let req = req.map_ctx(Ctx::User);
        match self {
            Target::Local(t) => t.submit(conn, req),
            Target::Remote(t) => t.submit(conn, req),
        }
    }

    #[inline]
    pub(crate) fn free(self, conn: Conn) -> Result<()> {
        match self {
            Target::Local(t) => t.free(conn),
            Target::Remote(t) => t.free(conn),
        }
    }
}
