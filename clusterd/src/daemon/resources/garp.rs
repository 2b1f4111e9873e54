//! Gratuitous ARP: after taking a virtual IP over, tell the LAN's neighbour caches
//! that the address now lives at this interface's MAC address.
//!
//! The packet is an ARP request whose sender and target protocol addresses are both
//! the VIP (RFC 5227's "ARP announcement"), broadcast on an `AF_PACKET` raw socket:
//!
//! ```text
//! // ethernet { dst ff:ff:ff:ff:ff:ff | src MAC | type 0x0806 }
//! // arp { htype 1 | ptype 0x0800 | hlen 6 | plen 4 | oper 1 (request)
//! //       | sha MAC | spa VIP | tha 00:00:00:00:00:00 | tpa VIP }
//! ```

use super::{StepError, StepResult};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Length of a gratuitous ARP frame (without the Ethernet FCS and padding).
pub const FRAME_LEN: usize = 42;
const ETH_P_ARP: u16 = 0x0806;

/// Builds the announcement frame for `ip` at `mac`.
pub fn build(mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // tha stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(mac)
}

/// The MAC address of `interface` (from sysfs).
pub fn interface_mac(interface: &str) -> StepResult<[u8; 6]> {
    let path = format!("/sys/class/net/{interface}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| StepError::io(&path, e))?;
    parse_mac(&text).ok_or_else(|| StepError::Failed(format!("{path}: not a MAC address")))
}

/// An `AF_PACKET` socket bound to one interface, closed on drop.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(interface: &str) -> StepResult<PacketSocket> {
        use std::os::fd::FromRawFd;
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .map_err(|e| StepError::io(format!("interface {interface}"), e.into()))?;
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if fd < 0 {
            return Err(StepError::io(
                "opening an AF_PACKET socket",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket {
            fd,
            ifindex: ifindex as i32,
        })
    }

    fn send_broadcast(&self, frame: &[u8]) -> StepResult {
        use std::os::fd::AsRawFd;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: the buffer and the address are valid for the lengths passed; the
        // descriptor is open for the lifetime of self.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(StepError::io(
                "sending a gratuitous ARP",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Sends `count` announcements for `ip` on `interface`, `interval` apart. The first
/// one is sent before this returns an error or spawns the rest in the background.
pub async fn announce(interface: &str, ip: Ipv4Addr, count: u32, interval: Duration) -> StepResult {
    if count == 0 {
        return Ok(());
    }
    let mac = interface_mac(interface)?;
    let frame = build(mac, ip);
    let sock = PacketSocket::open(interface)?;
    sock.send_broadcast(&frame)?;
    let interface = interface.to_string();
    tokio::spawn(async move {
        for i in 1..count {
            tokio::time::sleep(interval).await;
            if let Err(e) = sock.send_broadcast(&frame) {
                tracing::warn!(interface, vip = %ip, "gratuitous ARP {} of {count}: {e}", i + 1);
            }
        }
        tracing::info!(interface, vip = %ip, count, "gratuitous ARPs sent");
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let f = build(mac, Ipv4Addr::new(10, 213, 0, 50));
        let expected: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 213,
            0, 50, 0, 0, 0, 0, 0, 0, 10, 213, 0, 50,
        ];
        assert_eq!(f, expected);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:aa:0b:cc:0d:ee\n"),
            Some([2, 0xaa, 0x0b, 0xcc, 0x0d, 0xee])
        );
        assert_eq!(parse_mac("02:aa:0b:cc:0d"), None);
        assert_eq!(parse_mac("02:aa:0b:cc:0d:ee:ff"), None);
        assert_eq!(parse_mac("zz:aa:0b:cc:0d:ee"), None);
    }
}
