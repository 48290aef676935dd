//! The demo's three nodes — client, relay, exit — each its own plebnet stack over a UdpNic on loopback.
//!
//! ```text
//!   client 10.77.1.1 ══ leg 1 → 10.77.1.2 ══╗
//!                    ══ leg 2 → 10.77.1.3 ══╣ relay ── TLS cell channel ── exit 10.77.2.3 ── target :80
//!                        (lossy with --loss)  10.77.2.2
//! ```

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};

use plebnet::net::{Stack, StackConfig};
use plebnet::netstack::nic::{Impair, ImpairConfig, UdpNic, UdpNicConfig, UdpPeer};

/// MTU of every UdpNic (jumbo frames are fine on loopback).
const MTU: usize = 9000;

/// The three stacks and the relay's addresses the client's legs go to.
pub struct Network {
    pub client: Stack,
    pub relay: Stack,
    pub exit: Stack,
    pub relay_addrs: Vec<IpAddr>,
    pub exit_addr: IpAddr,
}

fn v4(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, c, d))
}

/// Builds the nodes; the client's NIC drops `loss` of the packets in each direction (seeded).
pub fn build(legs: usize, loss: f64, seed: u64) -> Result<Network, Box<dyn Error>> {
    let bind = || UdpSocket::bind("127.0.0.1:0");
    let (uc, ur, ue) = (bind()?, bind()?, bind()?);
    let (ec, er, ee) = (uc.local_addr()?, ur.local_addr()?, ue.local_addr()?);
    let nic = UdpNicConfig { mtu: MTU, ..UdpNicConfig::default() };
    let client_nic = UdpNic::from_socket(uc, vec![UdpPeer::new(er, &["10.77.1.0/24"])], nic.clone())?;
    let relay_nic = UdpNic::from_socket(
        ur,
        vec![UdpPeer::new(ec, &["10.77.1.1/32"]), UdpPeer::new(ee, &["10.77.2.3/32"])],
        nic.clone(),
    )?;
    let exit_nic = UdpNic::from_socket(ue, vec![UdpPeer::new(er, &["10.77.2.2/32"])], nic)?;

    let relay_addrs: Vec<IpAddr> = (0..legs).map(|i| v4(1, 2 + i as u8)).collect();
    let mut relay_config = StackConfig::with_address(&format!("{}/24", relay_addrs[0])).named("relay");
    for a in &relay_addrs[1..] {
        relay_config = relay_config.address(&format!("{a}/24"));
    }
    relay_config = relay_config.address("10.77.2.2/24");

    let client_config = StackConfig::with_address("10.77.1.1/24").named("client");
    let client = if loss > 0.0 {
        let impair = |s: u64| ImpairConfig { seed: s, loss, ..ImpairConfig::default() };
        Stack::new(client_config, Impair::with_directions(client_nic, impair(seed), impair(seed ^ 0x5eed)))?
    } else {
        Stack::new(client_config, client_nic)?
    };
    Ok(Network {
        client,
        relay: Stack::new(relay_config, relay_nic)?,
        exit: Stack::new(StackConfig::with_address("10.77.2.3/24").named("exit"), exit_nic)?,
        relay_addrs,
        exit_addr: v4(2, 3),
    })
}
