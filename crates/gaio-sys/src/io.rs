//! Nonblocking calls on raw fds, shared by every unix backend.
//!
//! Rules for all of them: `EINTR` is retried here and never reaches the caller;
//! `EAGAIN`/`EWOULDBLOCK` comes back as [`io::ErrorKind::WouldBlock`]; every other
//! failure is the OS error as an [`io::Error`].

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Runs `f` until it returns anything but `EINTR`.
/// A transfer call (`read`, `write`, `writev`, `sendto`, `sendmsg`) returning a
/// byte count. On Linux it enters the kernel through `syscall(2)` instead of
/// glibc's wrapper: those wrappers are pthread cancellation points and switch
/// asynchronous cancellation on and off around every call, which callgrind
/// counts at about 60 instructions per call, a tenth of a proactor's own work
/// per message; gaio never cancels threads. Elsewhere it is the libc function.
#[cfg(any(target_os = "linux", target_os = "android"))]
macro_rules! transfer {
    ($name: ident, $sys: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: every caller passes an fd it borrows for the call and pointers
        // to live buffers of the lengths it passes, exactly as the libc function
        // of the same name takes them; `syscall` only forwards them.
        let res = unsafe { libc::syscall(libc::$sys, $($arg as libc::c_long, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res as usize)
        }
    }};
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
macro_rules! transfer {
    ($name: ident, $sys: ident ( $($arg: expr),* $(,)* ) ) => {
        syscall!($name($($arg),*)).map(|n| n as usize)
    };
}

#[inline]
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Reads into `buf`; `Ok(0)` is end of stream (or an empty `buf`).
///
/// # Errors
/// `WouldBlock` when nothing is buffered; `ECONNRESET` and friends as they come.
#[inline]
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| {
        transfer!(
            read,
            SYS_read(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len()
            )
        )
    })
}

/// Writes to any fd with `write(2)`. On a pipe whose reader is gone this raises
/// `SIGPIPE` unless the process ignores it (Rust programs do by default); use
/// [`send`] for sockets.
///
/// # Errors
/// `WouldBlock` when the fd's buffer is full; `EPIPE` when the reader is gone.
#[inline]
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        transfer!(
            write,
            SYS_write(
                fd.as_raw_fd(),
                buf.as_ptr().cast::<libc::c_void>(),
                buf.len()
            )
        )
    })
}

/// Writes from several buffers in order with `writev(2)` (any fd). At most
/// [`IOV_MAX`](crate::IOV_MAX) slices are passed; the rest are ignored.
///
/// # Errors
/// As [`write()`].
#[inline]
pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(crate::IOV_MAX) as libc::c_int;
    // IoSlice is ABI-compatible with iovec on unix (documented by std).
    retry(|| {
        transfer!(
            writev,
            SYS_writev(fd.as_raw_fd(), bufs.as_ptr().cast::<libc::iovec>(), n)
        )
    })
}

#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
// Apple has no MSG_NOSIGNAL: gaio-core sets SO_NOSIGPIPE on each socket it
// registers (`set_nonblocking` does it). Linux and the BSDs have the flag.
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: libc::c_int = 0;

/// Sends on a connected stream socket without ever raising `SIGPIPE`
/// (`MSG_NOSIGNAL` on Linux and the BSDs; on macOS the socket must have
/// `SO_NOSIGPIPE`, which [`set_nonblocking`] sets for sockets).
///
/// # Errors
/// `WouldBlock` when the send buffer is full; `EPIPE`/`ECONNRESET` when the peer is
/// gone; `ENOTSOCK` for a non-socket.
#[inline]
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        // sendto with no address is send(2).
        transfer!(
            sendto,
            SYS_sendto(
                fd.as_raw_fd(),
                buf.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                SEND_FLAGS,
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::socklen_t
            )
        )
    })
}

/// [`send`] from several buffers in order (`sendmsg(2)`), never raising `SIGPIPE`.
/// At most [`IOV_MAX`](crate::IOV_MAX) slices are passed; the rest are ignored.
///
/// # Errors
/// As [`send`].
#[inline]
pub fn sendv(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is a plain C struct for which all-zeroes is a valid value
    // (no name, no control data); the fields we need are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(crate::IOV_MAX) as _;
    retry(|| {
        transfer!(
            sendmsg,
            SYS_sendmsg(fd.as_raw_fd(), &raw const msg, SEND_FLAGS)
        )
    })
}

/// What an `accept` failure means for the loop that calls it, so callers need no
/// errno values of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// No connection is waiting (`EAGAIN`): wait for the listener's next edge.
    WouldBlock,
    /// The process or system is out of fds or kernel memory (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`, `ENOMEM`). The queued connections raise no new edge, so retry
    /// after a pause rather than spinning or waiting for an event.
    Exhausted,
    /// This one connection failed before it could be accepted (`ECONNABORTED`,
    /// `EPROTO`, `EPERM` from a firewall, `EINTR`): accept the next one at once.
    Transient,
    /// Anything else (a closed or invalid listener, `EINVAL`, `ENOTSOCK`, …): the
    /// listener itself is in trouble.
    Fatal,
}

impl AcceptError {
    /// Classifies an error returned by [`accept`].
    ///
    /// ```
    /// use gaio_sys::AcceptError;
    /// let e = std::io::Error::from(std::io::ErrorKind::WouldBlock);
    /// assert_eq!(AcceptError::of(&e), AcceptError::WouldBlock);
    /// ```
    pub fn of(e: &io::Error) -> AcceptError {
        if e.kind() == io::ErrorKind::WouldBlock {
            return AcceptError::WouldBlock;
        }
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                AcceptError::Exhausted
            }
            Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR) => {
                AcceptError::Transient
            }
            _ => AcceptError::Fatal,
        }
    }
}

/// Accepts one connection from a listening socket. The new fd is close-on-exec and
/// nonblocking (`accept4` where the OS has it). Returns the peer address when it is
/// IPv4 or IPv6, `None` for other families (Unix sockets).
///
/// # Errors
/// `WouldBlock` when no connection is waiting; `EMFILE`/`ENFILE` when out of fds;
/// `ECONNABORTED` when a queued connection was reset before it was accepted;
/// [`AcceptError::of`] says what each means for the accept loop.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
    // SAFETY: sockaddr_storage is plain data; all-zeroes is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let fd = accept_raw(listener, &mut storage, &mut len)?;
    // SAFETY: accept just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[cfg(not(gaio_accept4))]
    {
        use std::os::fd::AsFd;
        set_cloexec(fd.as_fd())?;
        set_nonblocking(fd.as_fd(), true)?;
    }
    Ok((fd, sockaddr_to_std(&storage)))
}

/// `accept4` with the flags set at once where the OS has it, else `accept`
/// (the caller sets them).
fn accept_raw(
    listener: BorrowedFd<'_>,
    storage: &mut libc::sockaddr_storage,
    len: &mut libc::socklen_t,
) -> io::Result<libc::c_int> {
    let addr = (storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    let fd = listener.as_raw_fd();
    #[cfg(gaio_accept4)]
    let res = retry(|| {
        syscall!(accept4(
            fd,
            addr,
            &mut *len,
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK
        ))
    });
    #[cfg(not(gaio_accept4))]
    let res = retry(|| syscall!(accept(fd, addr, &mut *len)));
    res
}

#[cfg(not(gaio_accept4))]
fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFD))?;
    syscall!(fcntl(
        fd.as_raw_fd(),
        libc::F_SETFD,
        flags | libc::FD_CLOEXEC
    ))?;
    Ok(())
}

/// The peer address of a connected socket (`getpeername`): `None` for other
/// families than IPv4/IPv6 (Unix sockets) or when the peer is gone already.
pub fn peer_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all-zeroes is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for writes of the lengths given.
    let res = unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&raw mut storage).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if res != 0 {
        return None;
    }
    sockaddr_to_std(&storage)
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for any sockaddr.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Switches `O_NONBLOCK` on or off. On macOS and iOS it also sets `SO_NOSIGPIPE` on
/// sockets, so [`send`]/[`sendv`] never raise `SIGPIPE` there either. Socket options
/// the application set (nodelay, keepalive, linger, buffer sizes) are untouched.
///
/// # Errors
/// Whatever `fcntl` reports (e.g. `EBADF`).
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
    let new = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, new))?;
    }
    #[cfg(target_vendor = "apple")]
    if fd_kind(fd)? == FdKind::Socket {
        let one: libc::c_int = 1;
        syscall!(setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t
        ))?;
    }
    Ok(())
}

/// What kind of fd a descriptor is, as far as a proactor cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A stream socket (TCP, Unix stream): pollable, written with [`send`].
    Socket,
    /// A pipe or FIFO: pollable, written with [`write()`].
    Pipe,
    /// Anything the poller refuses or that is not a byte stream: regular files,
    /// directories, datagram sockets, devices.
    Unsupported,
}

/// Tells a pollable stream fd (stream socket, pipe) from one gaio cannot drive
/// (a regular file makes epoll fail with `EPERM`; datagram sockets are not streams).
///
/// # Errors
/// Whatever `fstat`/`getsockopt` report (e.g. `EBADF`).
pub fn fd_kind(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    // SAFETY: stat is plain data; fstat fills it before we read it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    syscall!(fstat(fd.as_raw_fd(), &mut st))?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => {
            let ty = socket_option(fd, libc::SO_TYPE)?;
            Ok(if ty == libc::SOCK_STREAM {
                FdKind::Socket
            } else {
                FdKind::Unsupported
            })
        }
        libc::S_IFIFO => Ok(FdKind::Pipe),
        _ => Ok(FdKind::Unsupported),
    }
}

/// Shuts down the write side of a connected socket (`shutdown(SHUT_WR)`): the
/// peer reads EOF once it has read everything sent before; reading goes on.
///
/// # Errors
/// `ENOTCONN` when not connected; `ENOTSOCK` for a pipe.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_WR))?;
    Ok(())
}

/// Takes the socket's pending error (`SO_ERROR`), which is how a nonblocking
/// `connect` reports its outcome once the socket is writable: `Ok(None)` means
/// connected.
///
/// # Errors
/// Whatever `getsockopt` reports (e.g. `ENOTSOCK`).
pub fn take_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let err = socket_option(fd, libc::SO_ERROR)?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// An `int` socket option at `SOL_SOCKET` level.
fn socket_option(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        name,
        (&mut value as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok(value)
}

/// A new nonblocking, close-on-exec stream socket of `family`, without
/// `SIGPIPE` on macOS.
fn stream_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    #[cfg(not(target_vendor = "apple"))]
    let fd = syscall!(socket(
        family,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0
    ))?;
    #[cfg(target_vendor = "apple")]
    let fd = syscall!(socket(family, libc::SOCK_STREAM, 0))?;
    // SAFETY: socket just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[cfg(target_vendor = "apple")]
    {
        use std::os::fd::AsFd;
        set_cloexec(fd.as_fd())?;
        set_nonblocking(fd.as_fd(), true)?;
    }
    Ok(fd)
}

/// Starts a nonblocking connect of `fd` to the socket address `addr` of `len`
/// bytes. `EINPROGRESS` (the usual answer) is success: the socket becomes
/// writable when the connect finishes, and [`take_error`] then tells how.
fn start_connect(
    fd: &OwnedFd,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> io::Result<()> {
    match syscall!(connect(fd.as_raw_fd(), addr, len)) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        // Interrupted: the connect goes on in the background (POSIX), and asking
        // again would say EALREADY.
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(e),
    }
}

/// A nonblocking TCP connect to `addr`: returns the socket at once, connected or
/// connecting. Wait until it is writable, then ask [`take_error`].
///
/// # Errors
/// Errors `socket` or `connect` report at once (`ENETUNREACH`, `EMFILE`, …).
pub fn connect_tcp(addr: &SocketAddr) -> io::Result<OwnedFd> {
    // SAFETY: sockaddr_storage is plain data; all-zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = stream_socket(family)?;
    start_connect(
        &fd,
        (&storage as *const libc::sockaddr_storage).cast(),
        len as libc::socklen_t,
    )?;
    Ok(fd)
}

/// A nonblocking connect to the Unix stream socket at `path`, as
/// [`connect_tcp`].
///
/// # Errors
/// `InvalidInput` for a path longer than `sun_path` holds; errors `socket` or
/// `connect` report at once (`ENOENT`, `ECONNREFUSED`, …).
pub fn connect_unix(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all-zeroes is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path too long or has a NUL byte",
        ));
    }
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    let fd = stream_socket(libc::AF_UNIX)?;
    start_connect(
        &fd,
        (&sun as *const libc::sockaddr_un).cast(),
        len as libc::socklen_t,
    )?;
    Ok(fd)
}
