//! Opening Linux tun/tap devices (`/dev/net/tun`, `TUNSETIFF`) and moving
//! packets through them one `read`/`write` at a time.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `struct ifreq` as TUNSETIFF reads and writes it: the name and the flags
/// (the rest of the kernel's union is padding here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// What [`open`] got.
pub(crate) struct Opened {
    pub(crate) fd: OwnedFd,
    /// The device's actual name.
    pub(crate) name: String,
    /// Every packet carries a `virtio_net_hdr` (asked for with `vnet`).
    pub(crate) vnet: bool,
    /// The kernel accepted checksum and TCP segmentation offload.
    pub(crate) offload: bool,
}

/// Creates (or attaches to) the tun (`tap == false`) or tap device `name`
/// (empty: the kernel picks one), non-blocking. With `vnet`, packets carry
/// a `virtio_net_hdr` of `vnet_len` bytes and offload is asked for.
pub(crate) fn open(name: &str, tap: bool, vnet: bool, vnet_len: usize) -> io::Result<Opened> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device name `{name}` is longer than 15 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let kind = if tap { libc::IFF_TAP } else { libc::IFF_TUN };
    let vnet_flag = if vnet { libc::IFF_VNET_HDR } else { 0 };
    req.flags = (kind | libc::IFF_NO_PI | vnet_flag) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a live,
    // correctly laid out local of at least that size.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(libc::IFNAMSIZ);
    let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
    let mut offload = false;
    if vnet {
        let size = vnet_len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live local.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size as *const libc::c_int) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let features = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes the feature bits by value.
        offload = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, features as libc::c_ulong) } == 0;
    }
    Ok(Opened { fd: OwnedFd::from(file), name, vnet, offload })
}

/// Reads one packet without blocking; `Ok(None)` if none waits.
pub(crate) fn read_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: reads at most `buf.len()` bytes into the live buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Writes one packet; the kernel takes it whole or not at all.
pub(crate) fn write_packet(fd: RawFd, packet: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: writes `packet.len()` bytes from the live slice.
        let n = unsafe { libc::write(fd, packet.as_ptr() as *const libc::c_void, packet.len()) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
