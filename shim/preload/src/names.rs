//! Name resolution: the `[preload] hosts` table first; in strict mode,
//! nothing else but numeric addresses and `localhost`, so no DNS query
//! can leave through the kernel.

use std::ffi::{CStr, CString};
use std::net::IpAddr;

use crate::runtime::{self, log_once};

/// What to do with a name.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Let libc resolve it.
    Pass,
    /// Resolve this numeric address instead (from the hosts table).
    Numeric(CString),
    /// Refuse (strict mode, unknown name).
    Refuse,
}

/// Decides how `name` is resolved.
pub(crate) fn lookup(name: &CStr) -> Lookup {
    let Ok(name) = name.to_str() else { return Lookup::Pass };
    let policy = runtime::policy();
    let trimmed = name.trim_end_matches('.');
    if let Some((_, ip)) = policy.hosts.iter().find(|(k, _)| k.trim_end_matches('.').eq_ignore_ascii_case(trimmed)) {
        return CString::new(ip.to_string()).map_or(Lookup::Pass, Lookup::Numeric);
    }
    if name.parse::<IpAddr>().is_ok() || !policy.strict {
        return Lookup::Pass;
    }
    if trimmed.eq_ignore_ascii_case("localhost") {
        return Lookup::Pass;
    }
    log_once(
        &format!("name:{trimmed}"),
        &format!("strict: `{trimmed}` is not in the [preload] hosts table; not resolved (no DNS through the kernel)"),
    );
    Lookup::Refuse
}

/// Whether a reverse lookup (address to name) must be answered without
/// asking DNS: in strict mode nothing may reach a resolver. Logged once.
pub(crate) fn refuse_reverse() -> bool {
    if !runtime::policy().strict {
        return false;
    }
    log_once(
        "reverse",
        "strict: reverse lookups (gethostbyaddr, getnameinfo) get no name, only the numeric address (no DNS through the kernel)",
    );
    true
}
