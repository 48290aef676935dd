//! `poll(2)` on a handful of descriptors, with a timeout.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Blocks until one of `fds` is ready or `timeout` passes (`None`: no
/// timeout). Each entry is a descriptor and whether writability counts too
/// (readability always does). Returns which descriptors are ready, bit `i`
/// for `fds[i]` (0 on timeout). An interrupted call returns `Ok(0)` so the
/// caller simply re-evaluates.
pub(crate) fn wait_ready(fds: &[(RawFd, bool)], timeout: Option<Duration>) -> io::Result<u8> {
    let mut pollfds = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 4];
    assert!(fds.len() <= pollfds.len(), "wait_ready supports at most 4 descriptors");
    for (slot, &(fd, writable)) in pollfds.iter_mut().zip(fds) {
        let events = if writable { libc::POLLIN | libc::POLLOUT } else { libc::POLLIN };
        *slot = libc::pollfd { fd, events, revents: 0 };
    }
    let timeout_ms: libc::c_int = match timeout {
        None => -1,
        // Round up so that a 0.3 ms deadline does not become a busy 0 ms poll.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: `pollfds` is a live local array and we pass a length no larger
    // than it; poll only writes the `revents` fields.
    let n = unsafe { libc::poll(pollfds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(pollfds[..fds.len()].iter().enumerate().filter(|(_, p)| p.revents != 0).fold(0, |mask, (i, _)| mask | 1 << i))
}
