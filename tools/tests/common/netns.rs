//! Two network namespaces joined by a veth pair, for the tests that run TaskManagers on
//! separate "hosts": whether this machine permits them, the `ip` calls that make them, the
//! veth's byte counters, and their removal on drop.

use std::process::Command;

/// `ip args`; panics with its stderr if it fails.
#[track_caller]
pub fn ip(args: &[&str]) -> String {
    let out =
        Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why network namespaces cannot be made here, if they cannot.
pub fn namespaces_refused() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("not root (effective uid {euid})"));
    }
    let probe = format!("cs-probe-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Err(e) => Some(format!("cannot run `ip` (package iproute2): {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "`ip netns add {probe}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
    }
}

/// Namespaces `cs-{tag}a-$PID` and `cs-{tag}b-$PID` joined by veth `cs{tag}va$PID`
/// (10.{subnet}.N.1/30, in A) and `cs{tag}vb$PID` (10.{subnet}.N.2/30, in B), N = PID % 250;
/// deleted on drop, which removes the veth. Test files that may run at once use different tags
/// and subnets.
pub struct Namespaces {
    pub a: String,
    pub b: String,
    pub veth_a: String,
    pub ip_a: String,
    pub ip_b: String,
}

impl Namespaces {
    pub fn create(tag: &str, subnet: u8) -> Namespaces {
        let pid = std::process::id();
        let n = pid % 250;
        let ns = Namespaces {
            a: format!("cs-{tag}a-{pid}"),
            b: format!("cs-{tag}b-{pid}"),
            veth_a: format!("cs{tag}va{pid}"),
            ip_a: format!("10.{subnet}.{n}.1"),
            ip_b: format!("10.{subnet}.{n}.2"),
        };
        let veth_b = format!("cs{tag}vb{pid}");
        ip(&["netns", "add", &ns.a]);
        ip(&["netns", "add", &ns.b]);
        ip(&["link", "add", &ns.veth_a, "type", "veth", "peer", "name", &veth_b]);
        ip(&["link", "set", &ns.veth_a, "netns", &ns.a]);
        ip(&["link", "set", &veth_b, "netns", &ns.b]);
        for (name, veth, addr) in [(&ns.a, &ns.veth_a, &ns.ip_a), (&ns.b, &veth_b, &ns.ip_b)] {
            ip(&["-n", name, "addr", "add", &format!("{addr}/30"), "dev", veth]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
            ip(&["-n", name, "link", "set", veth, "up"]);
        }
        ns
    }

    /// (bytes sent, bytes received) by A's end of the veth so far.
    pub fn veth_bytes(&self) -> (u64, u64) {
        let counter = |which: &str| -> u64 {
            let path = format!("/sys/class/net/{}/statistics/{which}_bytes", self.veth_a);
            let text = ip(&["netns", "exec", &self.a, "cat", &path]);
            text.trim().parse().unwrap_or_else(|_| panic!("{path} in {} holds '{}', not a count", self.a, text.trim()))
        };
        (counter("tx"), counter("rx"))
    }
}

impl Drop for Namespaces {
    /// Also deletes the veth in case setup failed before both ends were moved.
    fn drop(&mut self) {
        for name in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.veth_a]).output();
    }
}
