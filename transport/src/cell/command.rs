//! The one-byte cell command and which commands use variable-length framing.

use std::fmt;

/// A cell command (tor-spec §3): one byte on the wire.
///
/// Every byte value is a valid `Command`; the associated constants name the ones tor-spec defines. Unknown
/// commands decode like any other (Tor ignores the ones it does not understand), so the framing of a command
/// depends only on [`Command::is_variable`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Command(pub u8);

impl Command {
    /// Link padding, dropped by the receiver.
    pub const PADDING: Command = Command(0);
    /// Create a circuit with TAP (obsolete).
    pub const CREATE: Command = Command(1);
    /// Reply to [`Command::CREATE`].
    pub const CREATED: Command = Command(2);
    /// Carries a relay cell along a circuit.
    pub const RELAY: Command = Command(3);
    /// Tears a circuit down.
    pub const DESTROY: Command = Command(4);
    /// Create a circuit without public-key crypto.
    pub const CREATE_FAST: Command = Command(5);
    /// Reply to [`Command::CREATE_FAST`].
    pub const CREATED_FAST: Command = Command(6);
    /// Link protocol version negotiation (variable-length).
    pub const VERSIONS: Command = Command(7);
    /// Time and address information, sent after the handshake.
    pub const NETINFO: Command = Command(8);
    /// A relay cell that may carry `RELAY_EARLY`-restricted commands such as `EXTEND`.
    pub const RELAY_EARLY: Command = Command(9);
    /// Create a circuit with an extensible handshake (ntor).
    pub const CREATE2: Command = Command(10);
    /// Reply to [`Command::CREATE2`].
    pub const CREATED2: Command = Command(11);
    /// Negotiates channel padding.
    pub const PADDING_NEGOTIATE: Command = Command(12);
    /// Variable-length padding.
    pub const VPADDING: Command = Command(128);
    /// Certificates for the link handshake.
    pub const CERTS: Command = Command(129);
    /// Responder's challenge for initiator authentication.
    pub const AUTH_CHALLENGE: Command = Command(130);
    /// Initiator's answer to [`Command::AUTH_CHALLENGE`].
    pub const AUTHENTICATE: Command = Command(131);
    /// Reserved by tor-spec for future authorization.
    pub const AUTHORIZE: Command = Command(132);

    /// Whether cells with this command are variable-length: [`Command::VERSIONS`] and every command >= 128.
    pub const fn is_variable(self) -> bool {
        self.0 == Self::VERSIONS.0 || self.0 >= 128
    }

    /// The tor-spec name of this command, or `None` for a value tor-spec does not define.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "PADDING",
            1 => "CREATE",
            2 => "CREATED",
            3 => "RELAY",
            4 => "DESTROY",
            5 => "CREATE_FAST",
            6 => "CREATED_FAST",
            7 => "VERSIONS",
            8 => "NETINFO",
            9 => "RELAY_EARLY",
            10 => "CREATE2",
            11 => "CREATED2",
            12 => "PADDING_NEGOTIATE",
            128 => "VPADDING",
            129 => "CERTS",
            130 => "AUTH_CHALLENGE",
            131 => "AUTHENTICATE",
            132 => "AUTHORIZE",
            _ => return None,
        })
    }
}

impl From<u8> for Command {
    fn from(byte: u8) -> Self {
        Command(byte)
    }
}

impl From<Command> for u8 {
    fn from(command: Command) -> Self {
        command.0
    }
}

/// Prints the tor-spec name, or `Command(n)` for an undefined value.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Command({})", self.0),
        }
    }
}

/// Prints the tor-spec name, or `command n` for an undefined value.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "command {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_is_variable() {
        assert!(Command::VERSIONS.is_variable());
    }

    #[test]
    fn commands_from_128_are_variable() {
        for byte in 128..=255u8 {
            assert!(Command(byte).is_variable(), "{byte}");
        }
    }

    #[test]
    fn other_commands_below_128_are_fixed() {
        for byte in (0..128u8).filter(|&b| b != 7) {
            assert!(!Command(byte).is_variable(), "{byte}");
        }
    }

    #[test]
    fn names_and_formatting() {
        assert_eq!(Command::CREATE2.name(), Some("CREATE2"));
        assert_eq!(format!("{:?}", Command::AUTH_CHALLENGE), "AUTH_CHALLENGE");
        assert_eq!(format!("{:?}", Command(200)), "Command(200)");
        assert_eq!(Command(13).to_string(), "command 13");
        assert_eq!(u8::from(Command::from(9)), 9);
    }
}
