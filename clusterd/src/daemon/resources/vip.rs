//! The virtual IP: add the address to the interface through rtnetlink, then announce it
//! with gratuitous ARP; remove it on stop. Probe: the address is on the interface.

use super::{garp, StepError, StepResult};
use futures::TryStreamExt;
use hablock_config::IpPrefix;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::Handle;
use std::net::IpAddr;
use std::time::Duration;

/// How long one netlink exchange may take.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(10);

fn failed(what: String) -> impl FnOnce(rtnetlink::Error) -> StepError {
    move |e| StepError::Failed(format!("{what}: {e}"))
}

/// A netlink connection for one step (its task ends when the handle is dropped).
fn connect() -> StepResult<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| StepError::Io {
        what: "opening a netlink socket".into(),
        source: e,
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(handle: &Handle, interface: &str) -> StepResult<u32> {
    let mut links = handle
        .link()
        .get()
        .match_name(interface.to_string())
        .execute();
    match links
        .try_next()
        .await
        .map_err(failed(format!("looking up interface {interface}")))?
    {
        Some(link) => Ok(link.header.index),
        None => Err(StepError::Failed(format!("no interface {interface}"))),
    }
}

/// The address's own message on the interface, if it is there.
async fn find(
    handle: &Handle,
    index: u32,
    address: &IpPrefix,
) -> StepResult<Option<AddressMessage>> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(address.addr)
        .set_prefix_length_filter(address.prefix_len)
        .execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(failed(format!("listing the addresses of link {index}")))?
    {
        let matches = msg.attributes.iter().any(|a| match a {
            AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => *ip == address.addr,
            _ => false,
        });
        if matches {
            return Ok(Some(msg));
        }
    }
    Ok(None)
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = StepResult<T>>,
) -> StepResult<T> {
    tokio::time::timeout(NETLINK_TIMEOUT, f)
        .await
        .map_err(|_| StepError::Failed(format!("{what}: netlink timed out")))?
}

/// The address is on the interface.
pub async fn probe(address: &IpPrefix, interface: &str) -> StepResult<bool> {
    timed("probing the VIP", async {
        let handle = connect()?;
        let index = link_index(&handle, interface).await?;
        Ok(find(&handle, index, address).await?.is_some())
    })
    .await
}

/// Adds the address and announces it.
pub async fn start(
    address: &IpPrefix,
    interface: &str,
    arp_count: u32,
    arp_interval: Duration,
) -> StepResult {
    timed("adding the VIP", async {
        let handle = connect()?;
        let index = link_index(&handle, interface).await?;
        if find(&handle, index, address).await?.is_none() {
            handle
                .address()
                .add(index, address.addr, address.prefix_len)
                .execute()
                .await
                .map_err(failed(format!(
                    "adding {}/{} to {interface}",
                    address.addr, address.prefix_len
                )))?;
        }
        Ok(())
    })
    .await?;
    if let IpAddr::V4(v4) = address.addr {
        garp::announce(interface, v4, arp_count, arp_interval).await?;
    }
    Ok(())
}

/// Removes the address.
pub async fn stop(address: &IpPrefix, interface: &str) -> StepResult {
    timed("removing the VIP", async {
        let handle = connect()?;
        let index = link_index(&handle, interface).await?;
        if let Some(msg) = find(&handle, index, address).await? {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(failed(format!(
                    "removing {}/{} from {interface}",
                    address.addr, address.prefix_len
                )))?;
        }
        Ok(())
    })
    .await
}
