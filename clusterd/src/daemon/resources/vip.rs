//! The virtual IP: add the address to the interface (with `ip` from iproute2), then
//! announce it with gratuitous ARP; remove it on stop. Probe: the address is present.

use super::{garp, run_program, StepError, StepResult};
use hablock_config::IpPrefix;
use std::net::IpAddr;
use std::time::Duration;

const IP_TIMEOUT: Duration = Duration::from_secs(10);

fn cidr(a: &IpPrefix) -> String {
    format!("{}/{}", a.addr, a.prefix_len)
}

/// The address is on the interface.
pub async fn probe(address: &IpPrefix, interface: &str) -> StepResult<bool> {
    let family = if address.addr.is_ipv4() { "-4" } else { "-6" };
    let (code, out) = run_program(
        "ip",
        &[family, "-o", "addr", "show", "dev", interface],
        IP_TIMEOUT,
    )
    .await?;
    if code != 0 {
        return Err(StepError::Failed(format!(
            "ip addr show dev {interface}: {}",
            out.trim()
        )));
    }
    let want = cidr(address);
    Ok(out.split_whitespace().any(|w| w == want))
}

/// Adds the address and announces it.
pub async fn start(
    address: &IpPrefix,
    interface: &str,
    arp_count: u32,
    arp_interval: Duration,
) -> StepResult {
    if !probe(address, interface).await? {
        let (code, out) = run_program(
            "ip",
            &["addr", "add", &cidr(address), "dev", interface],
            IP_TIMEOUT,
        )
        .await?;
        if code != 0 && !probe(address, interface).await? {
            return Err(StepError::Failed(format!(
                "ip addr add {} dev {interface}: {}",
                cidr(address),
                out.trim()
            )));
        }
    }
    if let IpAddr::V4(v4) = address.addr {
        garp::announce(interface, v4, arp_count, arp_interval).await?;
    }
    Ok(())
}

/// Removes the address.
pub async fn stop(address: &IpPrefix, interface: &str) -> StepResult {
    if !probe(address, interface).await? {
        return Ok(());
    }
    let (code, out) = run_program(
        "ip",
        &["addr", "del", &cidr(address), "dev", interface],
        IP_TIMEOUT,
    )
    .await?;
    if code != 0 && probe(address, interface).await? {
        return Err(StepError::Failed(format!(
            "ip addr del {} dev {interface}: {}",
            cidr(address),
            out.trim()
        )));
    }
    Ok(())
}
