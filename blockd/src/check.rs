//! `blockctl check`: what blockd needs from this host, looked at before it is started or
//! reloaded: the file, the secret, the replication address, and for each resource its
//! backing device, its metadata (read-only) and its ublk driver.
//!
//! Nothing is written or locked, so a check is safe while blockd serves the resources.

use crate::daemon::md_location;
use crate::md::{MdError, MdStore};
use hablock_config::check::{self, Finding};
use hablock_config::{format_size, Config, ResourceConfig};
use std::path::Path;

/// Every finding for `node`'s part of `cfg` (loaded from `path`), in file order.
pub fn check(cfg: &Config, path: &Path, node: &str) -> Vec<Finding> {
    let mut findings = vec![check::config_loaded(cfg, path, node), check::secret(cfg)];
    if let Some(me) = cfg.nodes.get(node) {
        findings.push(check::address(
            "address",
            me.address,
            "the replication listener",
        ));
    }
    for (name, r) in &cfg.resources {
        findings.push(backing(name, r));
        findings.push(metadata(name, r));
        if let Some(id) = r.ublk_id {
            findings.push(ublk(name, id));
        }
    }
    findings
}

/// The backing device: there, a block device or a file, writable; its size.
fn backing(name: &str, r: &ResourceConfig) -> Finding {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let subject = format!("{name} backing");
    let shown = r.backing.display();
    let meta = match std::fs::metadata(&r.backing) {
        Ok(m) => m,
        Err(e) => return Finding::problem(subject, format!("{shown}: {e}")),
    };
    let kind = if meta.file_type().is_block_device() {
        "block device"
    } else if meta.is_file() {
        "file"
    } else {
        return Finding::problem(
            subject,
            format!("{shown}: neither a block device nor a file"),
        );
    };
    if let Err(e) = nix::unistd::access(&r.backing, nix::unistd::AccessFlags::W_OK) {
        return Finding::problem(subject, format!("{shown}: not writable ({e})"));
    }
    let size = std::fs::File::open(&r.backing).and_then(|mut f| f.seek(SeekFrom::End(0)));
    match size {
        Ok(bytes) => Finding::ok(subject, format!("{shown}: {kind}, {}", format_size(bytes))),
        Err(e) => Finding::problem(subject, format!("{shown}: {e}")),
    }
}

/// The metadata: present, readable, of this resource; what it says.
fn metadata(name: &str, r: &ResourceConfig) -> Finding {
    let subject = format!("{name} metadata");
    let md = match MdStore::inspect(&r.backing, &md_location(r)) {
        Ok(md) => md,
        Err(MdError::NoMetadata { path }) => {
            return Finding::problem(
                subject,
                format!(
                    "no hablock metadata on {}: run `blockctl create-md {name}`",
                    path.display()
                ),
            )
        }
        Err(e) => return Finding::problem(subject, e.to_string()),
    };
    let sb = md.superblock();
    let place = match &r.metadata {
        hablock_config::MetadataLocation::Internal => "internal".to_string(),
        hablock_config::MetadataLocation::External(p) => format!("external in {}", p.display()),
    };
    if sb.resource != name {
        return Finding::problem(
            subject,
            format!(
                "{place}, written for resource {:?}, not {name:?}: is the backing path of another resource?",
                sb.resource
            ),
        );
    }
    let role = if sb.was_primary() {
        ", last Primary here"
    } else {
        ""
    };
    Finding::ok(
        subject,
        format!(
            "{place}; {} usable, disk {:?}{role}",
            format_size(sb.usable_bytes),
            sb.disk
        ),
    )
}

/// The ublk driver: its control device, or a module blockd's unit can load.
fn ublk(name: &str, id: u32) -> Finding {
    let subject = format!("{name} ublk");
    if Path::new("/dev/ublk-control").exists() {
        return Finding::ok(
            subject,
            format!("/dev/ublkb{id} while Primary (ublk_drv loaded)"),
        );
    }
    if check::module_loadable("ublk_drv") {
        Finding::ok(
            subject,
            format!("/dev/ublkb{id} while Primary (ublk_drv not loaded yet: blockd.service runs `modprobe ublk_drv`)"),
        )
    } else {
        Finding::problem(
            subject,
            "this kernel has no ublk driver (no /dev/ublk-control, no ublk_drv module): remove ublk_id and use nbd_socket, or a kernel with CONFIG_BLK_DEV_UBLK",
        )
    }
}
