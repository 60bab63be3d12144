//! Pinning the calling thread to one CPU core.

use std::io;

/// Pins the calling thread to core `core` (0-based, as the OS numbers them).
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] when no online core has that id (or the process
/// is not allowed to run there); other OS errors as they come.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if core >= bits {
        return Err(no_such_core(core));
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: core < CPU_SETSIZE was checked above, so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    match syscall!(sched_setaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &set
    )) {
        Ok(_) => Ok(()),
        // The kernel answers EINVAL when the mask holds no online, permitted CPU.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(no_such_core(core)),
        Err(e) => Err(e),
    }
}

/// The cores the calling thread may run on, in ascending order.
///
/// # Errors
/// Whatever `sched_getaffinity` reports.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn current_thread_affinity() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all-zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    syscall!(sched_getaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &mut set
    ))?;
    let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: every index is below CPU_SETSIZE, so CPU_ISSET reads inside `set`.
    Ok((0..bits)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to core `core` through `core_affinity` (on macOS this is
/// only a hint to the scheduler).
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] when no core has that id.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    match ids.into_iter().find(|c| c.id == core) {
        Some(id) if core_affinity::set_for_current(id) => Ok(()),
        Some(_) => Err(io::Error::other(format!("could not pin to core {core}"))),
        None => Err(no_such_core(core)),
    }
}

/// The cores the calling thread may run on, as far as the OS tells.
///
/// # Errors
/// Never on these platforms; the signature matches Linux.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn current_thread_affinity() -> io::Result<Vec<usize>> {
    Ok(core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect())
}

fn no_such_core(core: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cpu core {core} does not exist or is not available to this process"),
    )
}
