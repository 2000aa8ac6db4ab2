//! The soak's own network: one namespace per cim server, joined to the root namespace by a
//! veth pair whose host ends hang on one bridge, all on a /24 of the benchmarking range
//! (198.18.0.0/15, RFC 2544: reserved for exactly this kind of test, and routed nowhere).
//!
//! Why namespaces: a fault "between a server and its backends" must hit that server only. With
//! each server behind its own interface, a partition is an `iptables` rule in *its* namespace,
//! loss is a `statistic` match on *its* link and a slow network a `tbf` queue on *its* veth,
//! while the route, the backends and the clients (in the root namespace, on the bridge address)
//! are untouched. No rule is ever added to the root namespace, and no IP forwarding is needed:
//! everything is one hop on the bridge.
//!
//! Everything is named after the soak's pid (`soak-<pid>-<n>`, `sk<pid>br`, `sk<pid>h<n>`), so
//! two soaks never collide and leftovers of a soak that was killed (SIGKILL leaves no chance to
//! clean up) are recognised and removed by the next one ([`clean_stale`]). Dropping the
//! [`Network`] deletes the namespaces (which takes their veth pairs along) and the bridge. Its
//! owner must stop every process that talks over it first: with the bridge gone, the
//! benchmarking range would be routed like any other address.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::error::{Result, SoakError};

/// The first two octets of the soak's subnets: the benchmarking range.
const RANGE: [u8; 2] = [198, 18];

/// One server's slice of the network.
#[derive(Debug, Clone)]
pub struct NodeNet {
    /// The namespace the server runs in.
    pub netns: String,
    /// The veth end in the root namespace (a bridge port).
    pub host_if: String,
    /// The veth end inside the namespace.
    pub ns_if: String,
    /// The server's address.
    pub ip: Ipv4Addr,
}

/// The bridge, the namespaces and their links; removed when dropped.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    host_ip: Ipv4Addr,
    nodes: Vec<NodeNet>,
    /// Whether the bridge was created (so Drop knows what to delete).
    bridge_created: bool,
}

impl Network {
    /// Creates the bridge and `nodes` namespaces for the soak with process id `pid`.
    pub fn create(pid: u32, nodes: usize) -> Result<Network> {
        let subnet = free_subnet(pid)?;
        let host_ip = Ipv4Addr::new(RANGE[0], RANGE[1], subnet, 1);
        let mut network = Network {
            bridge: format!("sk{pid}br"),
            host_ip,
            nodes: Vec::new(),
            bridge_created: false,
        };
        let bridge = network.bridge.clone();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        network.bridge_created = true;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for n in 1..=nodes {
            let octet = u8::try_from(10 + n).map_err(|_| {
                SoakError::Prerequisite(format!("{nodes} servers do not fit the subnet"))
            })?;
            let node = NodeNet {
                netns: format!("soak-{pid}-{n}"),
                host_if: format!("sk{pid}h{n}"),
                ns_if: format!("sk{pid}n{n}"),
                ip: Ipv4Addr::new(RANGE[0], RANGE[1], subnet, octet),
            };
            run(&["ip", "netns", "add", &node.netns])?;
            network.nodes.push(node.clone());
            let ns = node.netns.as_str();
            run(&[
                "ip",
                "link",
                "add",
                &node.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &node.ns_if,
            ])?;
            run(&["ip", "link", "set", &node.ns_if, "netns", ns])?;
            run(&["ip", "link", "set", &node.host_if, "master", &bridge])?;
            run(&["ip", "link", "set", &node.host_if, "up"])?;
            in_ns(
                ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", node.ip),
                    "dev",
                    &node.ns_if,
                ],
            )?;
            in_ns(ns, &["ip", "link", "set", &node.ns_if, "up"])?;
            in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// The root namespace's address on the bridge: where the route, the backends and the
    /// clients are reached.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// Server `index`'s (0-based) slice.
    pub fn node(&self, index: usize) -> &NodeNet {
        &self.nodes[index]
    }

    /// Drops every packet between server `index` and the host's `ports` (its backends), both
    /// ways: a partition between the server and those backends only.
    pub fn block_ports(&self, index: usize, ports: &[u16]) -> Result<()> {
        let node = self.node(index);
        let host = self.host_ip.to_string();
        for port in ports {
            let port = port.to_string();
            iptables(
                node,
                &["-A", "OUTPUT", "-o", &node.ns_if, "-d", &host, "-p", "tcp"],
                &["--dport", &port, "-j", "DROP"],
            )?;
            iptables(
                node,
                &["-A", "INPUT", "-i", &node.ns_if, "-s", &host, "-p", "tcp"],
                &["--sport", &port, "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// Drops a share `probability` (0..1) of the packets on server `index`'s link, each way.
    pub fn random_loss(&self, index: usize, probability: f64) -> Result<()> {
        let node = self.node(index);
        let p = format!("{probability:.3}");
        let random = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ];
        iptables(node, &["-A", "INPUT", "-i", &node.ns_if], &random)?;
        iptables(node, &["-A", "OUTPUT", "-o", &node.ns_if], &random)
    }

    /// Limits server `index`'s link to `kbit` per second each way, queueing up to `latency_ms`
    /// (then dropping): a slow, bufferbloated network.
    pub fn throttle(&self, index: usize, kbit: u32, latency_ms: u32) -> Result<()> {
        let node = self.node(index);
        let rate = format!("{kbit}kbit");
        let latency = format!("{latency_ms}ms");
        let tbf = [
            "root", "tbf", "rate", &rate, "burst", "4kb", "latency", &latency,
        ];
        let mut outbound = vec!["tc", "qdisc", "replace", "dev", &node.ns_if];
        outbound.extend(tbf);
        in_ns(&node.netns, &outbound)?;
        let mut inbound = vec!["tc", "qdisc", "replace", "dev", &node.host_if];
        inbound.extend(tbf);
        run(&inbound)
    }

    /// Takes server `index`'s link down (`up = false`) or up again: a full partition.
    pub fn set_link(&self, index: usize, up: bool) -> Result<()> {
        let node = self.node(index);
        let state = if up { "up" } else { "down" };
        in_ns(&node.netns, &["ip", "link", "set", &node.ns_if, state])
    }

    /// Removes every network fault of server `index`: rules flushed, queues removed, link up.
    pub fn heal(&self, index: usize) -> Result<()> {
        let node = self.node(index);
        in_ns(&node.netns, &["iptables", "-w", "-F"])?;
        // "No such qdisc" when none was added: nothing to remove.
        let _ = in_ns(
            &node.netns,
            &["tc", "qdisc", "del", "dev", &node.ns_if, "root"],
        );
        let _ = run(&["tc", "qdisc", "del", "dev", &node.host_if, "root"]);
        self.set_link(index, true)
    }

    /// The rules in server `index`'s namespace (`iptables -S`), for checking that a heal left
    /// none behind.
    pub fn rules(&self, index: usize) -> Result<String> {
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.node(index).netns])
                .args(["iptables", "-w", "-S"]),
        )
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for node in &self.nodes {
            kill_namespace_processes(&node.netns);
            // Deleting the namespace destroys its veth end, and with it the pair.
            let _ = run(&["ip", "netns", "del", &node.netns]);
            let _ = run(&["ip", "link", "del", &node.host_if]);
        }
        if self.bridge_created {
            let _ = run(&["ip", "link", "del", &self.bridge]);
        }
    }
}

/// A /24 of the benchmarking range no interface uses yet, preferring one derived from `pid`.
fn free_subnet(pid: u32) -> Result<u8> {
    let addresses = output(Command::new("ip").args(["-o", "-4", "addr", "show"]))?;
    let first = u8::try_from(pid % 250).unwrap_or(0);
    (0..=250u8)
        .map(|offset| first.wrapping_add(offset) % 251 + 1)
        .find(|subnet| {
            let prefix = format!("{}.{}.{subnet}.", RANGE[0], RANGE[1]);
            !addresses.contains(&prefix)
        })
        .ok_or_else(|| SoakError::Prerequisite("no free /24 in 198.18.0.0/16".into()))
}

/// Removes what soaks that are no longer running left behind: their namespaces (and the
/// processes in them), links and work directories. Returns what was removed.
pub fn clean_stale(work_root: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let namespaces = output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for name in namespaces
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(pid) = soak_pid(name.strip_prefix("soak-"), '-') else {
            continue;
        };
        if soak_is_running(pid) {
            continue;
        }
        kill_namespace_processes(name);
        if run(&["ip", "netns", "del", name]).is_ok() {
            removed.push(format!("namespace {name}"));
        }
    }
    let links = output(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_default();
    for link in links.lines().filter_map(|line| {
        // "12: sk123h1@if11: <...>" -> "sk123h1"
        let name = line.split(':').nth(1)?.trim();
        Some(name.split('@').next().unwrap_or(name).to_string())
    }) {
        let Some(pid) = soak_pid(link.strip_prefix("sk"), 'h')
            .or_else(|| soak_pid(link.strip_prefix("sk"), 'n'))
            .or_else(|| soak_pid(link.strip_prefix("sk"), 'b'))
        else {
            continue;
        };
        if !soak_is_running(pid) && run(&["ip", "link", "del", &link]).is_ok() {
            removed.push(format!("link {link}"));
        }
    }
    if let Ok(dirs) = fs::read_dir(work_root) {
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            let Some(pid) = soak_pid(name.strip_prefix("cim-soak-"), '\0') else {
                continue;
            };
            let kept = dir.path().join(crate::cluster::KEEP_MARKER).exists();
            if !kept && !soak_is_running(pid) && fs::remove_dir_all(dir.path()).is_ok() {
                removed.push(format!("directory {}", dir.path().display()));
            }
        }
    }
    removed
}

/// The pid in a soak name's remainder (`123-1` with `-`, `123h1` with `h`, `123` alone).
fn soak_pid(rest: Option<&str>, separator: char) -> Option<u32> {
    let rest = rest?;
    let digits = match rest.split_once(separator) {
        Some((digits, _)) => digits,
        None if separator == '\0' => rest,
        None => return None,
    };
    digits.parse().ok()
}

/// Whether process `pid` is a running soak (a recycled pid of another program is not).
fn soak_is_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "cim-soak")
}

/// SIGKILLs every process inside namespace `netns`.
fn kill_namespace_processes(netns: &str) {
    let pids = output(Command::new("ip").args(["netns", "pids", netns])).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `iptables -w <head> <tail>` inside `node`'s namespace.
fn iptables(node: &NodeNet, head: &[&str], tail: &[&str]) -> Result<()> {
    let mut args = vec!["iptables", "-w"];
    args.extend(head);
    args.extend(tail);
    in_ns(&node.netns, &args)
}

/// Runs `args` inside namespace `netns`.
fn in_ns(netns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["ip", "netns", "exec", netns];
    full.extend(args);
    run(&full)
}

/// Runs a program and fails with its standard error unless it succeeds.
pub fn run(args: &[&str]) -> Result<()> {
    let Some((program, rest)) = args.split_first() else {
        return Ok(());
    };
    output(Command::new(program).args(rest)).map(drop)
}

/// Runs `command` and returns its standard output, or fails with its standard error.
fn output(command: &mut Command) -> Result<String> {
    let line = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command
            .get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = command.output().map_err(|e| SoakError::Command {
        command: line.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SoakError::Command {
            command: line,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_names_give_back_the_pid_of_the_soak_that_made_them() {
        assert_eq!(soak_pid(Some("123-2"), '-'), Some(123));
        assert_eq!(soak_pid(Some("123h2"), 'h'), Some(123));
        assert_eq!(soak_pid(Some("123br"), 'b'), Some(123));
        assert_eq!(soak_pid(Some("123"), '\0'), Some(123));
        assert_eq!(soak_pid(Some("abc-1"), '-'), None);
        assert_eq!(soak_pid(Some("123"), '-'), None);
        assert_eq!(soak_pid(None, '-'), None);
    }

    #[test]
    fn a_pid_that_is_not_a_soak_is_not_running_as_one() {
        // This test binary is not called cim-soak.
        assert!(!soak_is_running(std::process::id()));
    }
}
