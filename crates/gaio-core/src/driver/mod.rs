//! Drivers move bytes; the engine decides what to move.
//!
//! A driver owns the kernel interface of one watcher and offers the engine:
//!
//! * `register(fd, token)` / `deregister(fd)`: start and stop reporting on an fd;
//!   a refused registration is an error for that fd only.
//! * `poll(timeout)`: wait for the kernel to report progress, at most `timeout`
//!   (`None`: until something happens; a zero timeout never blocks), then hand the
//!   engine what it reported (`events`), each event naming the `Token` an fd was
//!   registered with.
//! * the transfers themselves (`read`, `write`), which never block: "not now" is
//!   `WouldBlock`, and `EINTR` never reaches the engine.
//! * `syscalls`: how many system calls it made, for `Stats`.
//!
//! It knows nothing of requests, their order, deadlines, the swap buffer or
//! completions: those are the engine's, the same on every backend. The readiness
//! driver ([`poll`], epoll or kqueue) is the first; a completion driver (io_uring)
//! submits the engine's transfers instead of attempting them, and reports their
//! results as its events.

pub(crate) mod poll;

pub(crate) use poll::Driver;
