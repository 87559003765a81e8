//! Machines made of Linux network namespaces, for multi-host tests: a switch namespace holding a
//! bridge, and one namespace per host joined to it by a veth pair, with an address from the
//! benchmarking range 198.18.0.0/15 (RFC 2544). Nothing is added to the caller's own namespace;
//! dropping a [`Lab`] deletes every namespace it made (and with them their links), also when a
//! test fails.

use std::process::{Command, Stdio};

/// Why namespaces cannot be used here (the test is then skipped).
pub fn unavailable() -> Option<String> {
    // The effective uid is the second field of `Uid:` in /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("unknown");
    if euid != "0" {
        return Some(format!("it needs root to create network namespaces (running as uid {euid})"));
    }
    match Command::new("ip").args(["netns", "list"]).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`ip netns list` failed ({s})")),
        Err(e) => Some(format!("`ip` (iproute2) cannot be run: {e}")),
    }
}

/// A bridge and hosts on it, each a network namespace; all deleted on drop.
pub struct Lab {
    prefix: String,
    made: Vec<String>,
    hosts: Vec<(String, String)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Lab {
    /// Namespaces `<prefix>-sw` (the bridge) and `<prefix>-<host>` for each host name, the
    /// i-th host at 198.18.0.(i+1)/24. Leftovers of an earlier run of the same test process id
    /// are removed first.
    pub fn new(prefix: &str, hosts: &[&str]) -> Result<Lab, String> {
        let mut lab = Lab { prefix: prefix.to_string(), made: Vec::new(), hosts: Vec::new() };
        let sw = format!("{prefix}-sw");
        for name in std::iter::once(sw.clone()).chain(hosts.iter().map(|h| format!("{prefix}-{h}"))) {
            let _ = ip(&["netns", "del", &name]);
        }
        lab.add_ns(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, host) in hosts.iter().enumerate() {
            let ns = format!("{prefix}-{host}");
            lab.add_ns(&ns)?;
            let (inside, port, addr) = (format!("eth{i}"), format!("port{i}"), format!("198.18.0.{}", i + 1));
            ip(&["link", "add", &inside, "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            lab.hosts.push((host.to_string(), addr));
        }
        Ok(lab)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.made.push(name.to_string());
        Ok(())
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The address of `host`.
    pub fn addr(&self, host: &str) -> &str {
        &self.hosts.iter().find(|(h, _)| h == host).unwrap_or_else(|| panic!("no host {host}")).1
    }

    /// `ip netns exec <ns of host>`: a prefix to run a program on `host`.
    pub fn exec(&self, host: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(host)]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Hosts first, then the switch; deleting a namespace destroys its ends of the veths.
        for name in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("warning: cannot remove network namespace {name}: {e}");
            }
        }
    }
}
