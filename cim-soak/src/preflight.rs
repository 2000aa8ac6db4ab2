//! What the soak needs from the machine, checked before anything is created, and what to do
//! when something is missing.
//!
//! The soak builds network namespaces and firewall rules, so it needs root and the `ip`,
//! `iptables`, `tc` and `setpriv` programs. A developer without them gets `SKIPPED: <why>` and
//! exit 0; CI (`CI=true`) gets a failure, because a soak that silently skips there would hide
//! every bug it exists to find (the same rule as the backend fixtures').

use std::process::{Command, Stdio};

use cim_backend_fixtures::process::find_program;

use crate::error::{Result, SoakError};

/// Checks root and the programs; the first thing missing is the error.
pub fn check() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(SoakError::Prerequisite(
            "the soak needs root (network namespaces, iptables); run it as root or with sudo"
                .into(),
        ));
    }
    let sbin = [
        std::path::PathBuf::from("/usr/sbin"),
        std::path::PathBuf::from("/sbin"),
    ];
    for (program, package) in [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("iptables", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if find_program(program, &sbin).is_none() {
            return Err(SoakError::Prerequisite(format!(
                "{program} is missing (apt-get install {package})"
            )));
        }
    }
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !netns.is_ok_and(|status| status.success()) {
        return Err(SoakError::Prerequisite(
            "`ip netns` does not work here (no network namespace support)".into(),
        ));
    }
    Ok(())
}
