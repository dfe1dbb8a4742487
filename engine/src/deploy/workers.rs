//! The workers file and where each TaskManager goes: its syntax (one host per line, optionally
//! `slots=N`, `#` comments), which hosts are this machine, core offsets for TaskManagers sharing a
//! machine, and the checks of the configuration against the hosts. All pure.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::Path;

use super::DeployError;
use crate::conf::ENV_PREFIX;

/// Largest workers file read, in bytes.
pub const WORKERS_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most TaskManager lines in a workers file.
pub const WORKERS_MAX: usize = 1024;
/// Bounds of `slots=N` (those of `taskmanager.numberOfTaskSlots`).
const SLOTS_MAX: u32 = 1024;
/// Longest host name (DNS's limit).
const HOST_CHARS_MAX: usize = 253;

/// One line of the workers file: a TaskManager to start on `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub host: String,
    /// `slots=N`; `None`: the configuration's `taskmanager.numberOfTaskSlots` or its default.
    pub slots: Option<u32>,
    /// The line in the file (1-based).
    pub line: usize,
}

/// Whether `host` can be a host name or an IP address. It never starts with `-`, so ssh never
/// reads it as an option, and holds nothing a shell would interpret.
fn check_host(host: &str) -> Result<(), String> {
    if host.starts_with('[') {
        return Err(format!("`{host}`: write an IPv6 address without brackets, e.g. `::1`"));
    }
    if host.starts_with('-') {
        return Err(format!("`{host}` is not a host name (it starts with `-`)"));
    }
    if host.len() > HOST_CHARS_MAX {
        return Err(format!("the host name is {} characters long, more than {HOST_CHARS_MAX}", host.len()));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    match host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        None => Ok(()),
        Some(c) => Err(format!(
            "`{host}` is not a host name or IP address (`{}` is not allowed; set a user or port for ssh in \
             ~/.ssh/config)",
            c.escape_debug()
        )),
    }
}

/// Parses a workers file: one host per line, optionally followed by `slots=N`; `#` starts a
/// comment; blank lines are ignored. `path` names the file in errors.
pub fn parse_workers(text: &str, path: &Path) -> Result<Vec<Worker>, DeployError> {
    let mut workers = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let error = |message: String| DeployError::Workers { path: path.to_path_buf(), line, message };
        let content = raw.split('#').next().unwrap_or("").trim();
        let mut tokens = content.split_whitespace();
        let Some(host) = tokens.next() else { continue };
        check_host(host).map_err(error)?;
        let mut slots = None;
        for token in tokens {
            let Some(value) = token.strip_prefix("slots=") else {
                return Err(error(format!(
                    "unknown option `{token}` after the host: the only option is `slots=N`, e.g. `{host} slots=4`"
                )));
            };
            if slots.is_some() {
                return Err(error("`slots=` is given twice".into()));
            }
            let n: u32 = value
                .parse()
                .ok()
                .filter(|n| (1..=SLOTS_MAX).contains(n))
                .ok_or_else(|| error(format!("`slots={value}`: expected a whole number from 1 to {SLOTS_MAX}")))?;
            slots = Some(n);
        }
        if workers.len() == WORKERS_MAX {
            return Err(error(format!("more than {WORKERS_MAX} TaskManagers")));
        }
        workers.push(Worker { host: host.to_string(), slots, line });
    }
    Ok(workers)
}

/// Reads and parses a workers file (at most [`WORKERS_FILE_BYTES_MAX`] bytes); an empty list is
/// an error.
pub fn read_workers(path: &Path) -> Result<Vec<Worker>, DeployError> {
    let read_error = |source| DeployError::WorkersRead { path: path.to_path_buf(), source };
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(read_error)?
        .take(WORKERS_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > WORKERS_FILE_BYTES_MAX {
        return Err(read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the limit of {WORKERS_FILE_BYTES_MAX} bytes"),
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count() + 1;
        DeployError::Workers { path: path.to_path_buf(), line, message: "not UTF-8 text".into() }
    })?;
    let workers = parse_workers(&text, path)?;
    if workers.is_empty() {
        return Err(DeployError::NoWorkers { path: path.to_path_buf() });
    }
    Ok(workers)
}

/// Whether `host` names this machine: `localhost`, a loopback address, or this machine's host
/// name (`this_host`, also its first label when it is a fully qualified name). Any other name or
/// address is reached through ssh, even one of this machine's own interfaces.
pub fn is_local_host(host: &str, this_host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let this = this_host.to_ascii_lowercase();
    if host == "localhost" || host == "localhost.localdomain" {
        return true;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    !this.is_empty() && (host == this || this.split('.').next() == Some(host.as_str()))
}

/// One TaskManager `start` will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskManagerPlan {
    /// 1-based, in the order of the workers file.
    pub index: usize,
    pub host: String,
    pub local: bool,
    /// `--slots`: the line's `slots=N`, else the configuration's, else unset (one per core).
    pub slots: Option<u32>,
    /// `--core-offset`: the slots of the TaskManagers before it on the same machine.
    pub core_offset: u32,
    /// `-D taskmanager.data.port=N` for the second and later TaskManagers on a machine when the
    /// configuration fixes the port (so they do not all try to listen on it).
    pub data_port: Option<u16>,
    /// Its line in the workers file.
    pub line: usize,
}

/// What is planned on one machine so far.
struct Machine {
    /// The next free core, or `None` once a TaskManager of unknown size took some.
    next_core: Option<u32>,
    /// The line of that TaskManager of unknown size.
    unknown_line: Option<usize>,
    taskmanagers: u32,
    warned: bool,
}

/// Plans a TaskManager per worker. TaskManagers sharing a machine get consecutive core offsets
/// (slot i of the second one is pinned to core `slots of the first + i`), which needs their slot
/// counts: when one is unknown the rest on that machine start at core 0 again, with a warning.
/// With a fixed `taskmanager.data.port` (`data_port` > 0), the k-th TaskManager on a machine
/// (from 0) listens on `data_port + k`.
pub fn plan_taskmanagers(
    workers: &[Worker],
    this_host: &str,
    default_slots: Option<u32>,
    data_port: u16,
) -> (Vec<TaskManagerPlan>, Vec<String>) {
    let mut machines: HashMap<String, Machine> = HashMap::new();
    let mut plans = Vec::with_capacity(workers.len());
    let mut warnings = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let local = is_local_host(&w.host, this_host);
        let where_ = if local { "this machine".to_string() } else { w.host.clone() };
        let machine = machines
            .entry(if local { String::new() } else { w.host.to_ascii_lowercase() })
            .or_insert(Machine { next_core: Some(0), unknown_line: None, taskmanagers: 0, warned: false });
        let slots = w.slots.or(default_slots);
        let core_offset = match (machine.next_core, machine.unknown_line) {
            (Some(offset), _) => offset,
            (None, unknown) => {
                if !machine.warned {
                    machine.warned = true;
                    warnings.push(format!(
                        "line {}: the TaskManagers on {where_} share cores, because line {} has no `slots=N` and \
                         `taskmanager.numberOfTaskSlots` is not set (each then takes one slot per physical core, \
                         starting at core 0); give every line for this machine `slots=N`",
                        w.line,
                        unknown.unwrap_or(w.line)
                    ));
                }
                0
            }
        };
        machine.next_core = match (machine.next_core, slots) {
            (Some(offset), Some(s)) => Some(offset.saturating_add(s)),
            (Some(_), None) => {
                machine.unknown_line = Some(w.line);
                None
            }
            (None, _) => None,
        };
        let k = machine.taskmanagers;
        machine.taskmanagers += 1;
        let data_port = match u16::try_from(u32::from(data_port) + k) {
            _ if data_port == 0 || k == 0 => None,
            Ok(port) => Some(port),
            Err(_) => {
                warnings.push(format!(
                    "line {}: `taskmanager.data.port` {data_port} + {k} is past 65535, so this TaskManager on \
                     {where_} cannot get a port of its own; it will fail to listen",
                    w.line
                ));
                None
            }
        };
        plans.push(TaskManagerPlan {
            index: i + 1,
            host: w.host.clone(),
            local,
            slots,
            core_offset,
            data_port,
            line: w.line,
        });
    }
    (plans, warnings)
}

/// Refuses a JobManager address that a remote TaskManager could not reach: a loopback address
/// (the default `127.0.0.1`) while the workers file names another machine.
pub fn check_jobmanager_address(
    rpc_address: &str,
    plans: &[TaskManagerPlan],
    workers_file: &Path,
) -> Result<(), DeployError> {
    let loopback =
        rpc_address.eq_ignore_ascii_case("localhost") || rpc_address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match plans.iter().find(|p| !p.local) {
        Some(remote) if loopback => Err(DeployError::Invalid(format!(
            "`jobmanager.rpc.address` is {rpc_address}, a loopback address, but {}:{} names the host {}, whose \
             TaskManager could not reach the JobManager there: set `jobmanager.rpc.address` in the configuration to \
             an address of this machine that {} can reach",
            workers_file.display(),
            remote.line,
            remote.host,
            remote.host
        ))),
        _ => Ok(()),
    }
}

/// A warning when remote TaskManagers will not see this shell's `CORESTREAM_CONF_*` variables
/// (`env_keys`): ssh does not pass them, so those TaskManagers read only their configuration file.
pub fn remote_env_warning(env_keys: &[String], plans: &[TaskManagerPlan]) -> Option<String> {
    let remote = plans.iter().find(|p| !p.local)?;
    let first = env_keys.iter().find(|k| k.starts_with(ENV_PREFIX))?;
    Some(format!(
        "{first} (and any other CORESTREAM_CONF_* variable) applies to the JobManager and the TaskManagers on this \
         machine only: the TaskManager on {} reads only the configuration file there, so put the setting (and the \
         secret, as `security.cluster.secret-file`) in that file",
        remote.host
    ))
}

/// The `taskmanager` arguments of a plan.
pub fn taskmanager_args(config_args: &[OsString], plan: &TaskManagerPlan) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["taskmanager".into()];
    args.extend(config_args.iter().cloned());
    if let Some(slots) = plan.slots {
        args.extend(["--slots".into(), slots.to_string().into()]);
    }
    if plan.core_offset > 0 {
        args.extend(["--core-offset".into(), plan.core_offset.to_string().into()]);
    }
    if let Some(port) = plan.data_port {
        args.extend(["-D".into(), format!("taskmanager.data.port={port}").into()]);
    }
    args
}

/// The log file name of a TaskManager (the host keeps names apart when several machines share
/// the state directory's file system).
pub(super) fn taskmanager_log_name(plan: &TaskManagerPlan) -> String {
    let host: String =
        plan.host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    format!("taskmanager-{}-{host}.log", plan.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(text: &str) -> Result<Vec<Worker>, DeployError> {
        parse_workers(text, Path::new("/etc/corestream/workers"))
    }

    #[test]
    fn workers_file_hosts_comments_and_slots() {
        let text = "# the workers\n\nlocalhost\n  node-1.example.org slots=4   # big one\n10.0.0.7\n::1 slots=1\n";
        let w = workers(text).unwrap();
        assert_eq!(
            w,
            vec![
                Worker { host: "localhost".into(), slots: None, line: 3 },
                Worker { host: "node-1.example.org".into(), slots: Some(4), line: 4 },
                Worker { host: "10.0.0.7".into(), slots: None, line: 5 },
                Worker { host: "::1".into(), slots: Some(1), line: 6 },
            ]
        );
        assert!(workers("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn malformed_worker_lines_name_the_file_and_line() {
        let cases = [
            ("localhost\nnode1 cores=2\n", 2, "unknown option `cores=2`"),
            ("node1 slots=0\n", 1, "`slots=0`: expected a whole number from 1 to 1024"),
            ("node1 slots=x\n", 1, "`slots=x`"),
            ("node1 slots=2 slots=3\n", 1, "given twice"),
            ("\n\n-oProxyCommand=evil\n", 3, "starts with `-`"),
            ("user@node1\n", 1, "`@` is not allowed"),
            ("node1;reboot\n", 1, "`;` is not allowed"),
            ("[::1]\n", 1, "without brackets"),
        ];
        for (text, line, expected) in cases {
            let msg = workers(text).unwrap_err().to_string();
            assert!(msg.starts_with(&format!("/etc/corestream/workers:{line}: ")), "{text:?}: {msg}");
            assert!(msg.contains(expected), "{text:?}: {msg}");
        }
        let many = "localhost\n".repeat(WORKERS_MAX + 1);
        assert!(workers(&many).unwrap_err().to_string().contains(&format!("more than {WORKERS_MAX}")));
    }

    #[test]
    fn reading_a_workers_file_checks_size_encoding_and_emptiness() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# only a comment\n").unwrap();
        assert!(matches!(read_workers(&empty), Err(DeployError::NoWorkers { .. })));
        let binary = dir.path().join("binary");
        std::fs::write(&binary, b"localhost\n\xff\n").unwrap();
        let msg = read_workers(&binary).unwrap_err().to_string();
        assert!(msg.ends_with("binary:2: not UTF-8 text"), "{msg}");
        let missing = dir.path().join("missing");
        let e = read_workers(&missing).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("cannot read the workers file"), "{e}");
    }

    #[test]
    fn local_hosts() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.0.1.1", "::1", "node7", "node7.example.org"] {
            assert!(is_local_host(host, "node7.example.org"), "{host}");
        }
        assert!(is_local_host("Node7.Example.Org", "node7.example.org"));
        assert!(is_local_host("node7", "node7"));
        for host in ["node8", "10.0.0.7", "node7.other.org", "::2"] {
            assert!(!is_local_host(host, "node7.example.org"), "{host}");
        }
        assert!(!is_local_host("node7", ""));
    }

    fn worker(host: &str, slots: Option<u32>, line: usize) -> Worker {
        Worker { host: host.into(), slots, line }
    }

    #[test]
    fn taskmanagers_sharing_a_machine_get_consecutive_cores() {
        let w = [
            worker("localhost", Some(2), 1),
            worker("node2", None, 2),
            worker("127.0.0.1", Some(3), 3),
            worker("me", None, 4),
            worker("node2", None, 5),
        ];
        let (plans, warnings) = plan_taskmanagers(&w, "me", Some(1), 0);
        let offsets: Vec<(usize, bool, Option<u32>, u32)> =
            plans.iter().map(|p| (p.index, p.local, p.slots, p.core_offset)).collect();
        assert_eq!(
            offsets,
            vec![
                (1, true, Some(2), 0),
                (2, false, Some(1), 0),
                (3, true, Some(3), 2),
                (4, true, Some(1), 5),
                (5, false, Some(1), 1)
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn unknown_slot_counts_on_one_machine_are_warned_about() {
        let w = [
            worker("localhost", None, 1),
            worker("localhost", None, 2),
            worker("localhost", None, 3),
            worker("n", None, 4),
        ];
        let (plans, warnings) = plan_taskmanagers(&w, "me", None, 0);
        assert!(plans.iter().all(|p| p.core_offset == 0));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("line 2: the TaskManagers on this machine share cores, because line 1"),
            "{}",
            warnings[0]
        );
        let (_, warnings) = plan_taskmanagers(&[worker("localhost", None, 1)], "me", None, 0);
        assert!(warnings.is_empty());
        // The line named is the one without slots=N, not the first of the machine.
        let w = [worker("node2", Some(2), 1), worker("node2", None, 5), worker("node2", Some(1), 9)];
        let (plans, warnings) = plan_taskmanagers(&w, "me", None, 0);
        assert_eq!(plans.iter().map(|p| p.core_offset).collect::<Vec<_>>(), [0, 2, 0]);
        assert!(
            warnings[0].starts_with("line 9: the TaskManagers on node2 share cores, because line 5 "),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_fixed_data_port_counts_up_per_machine() {
        let w = [worker("localhost", Some(1), 1), worker("node2", Some(1), 2), worker("localhost", Some(1), 3)];
        let (plans, warnings) = plan_taskmanagers(&w, "me", None, 6124);
        assert_eq!(plans.iter().map(|p| p.data_port).collect::<Vec<_>>(), [None, None, Some(6125)]);
        assert!(warnings.is_empty());
        let (plans, _) = plan_taskmanagers(&w, "me", None, 0);
        assert!(plans.iter().all(|p| p.data_port.is_none()), "port 0: each TaskManager takes any free port");
        let (plans, warnings) = plan_taskmanagers(&w, "me", None, 65535);
        assert_eq!(plans[2].data_port, None);
        assert!(warnings[0].contains("`taskmanager.data.port` 65535 + 1 is past 65535"), "{warnings:?}");
    }

    #[test]
    fn a_loopback_jobmanager_is_refused_with_remote_workers() {
        let (local, _) = plan_taskmanagers(&[worker("localhost", None, 1)], "me", None, 0);
        assert!(check_jobmanager_address("127.0.0.1", &local, Path::new("w")).is_ok());
        let (remote, _) = plan_taskmanagers(&[worker("localhost", None, 1), worker("node2", None, 4)], "me", None, 0);
        let e = check_jobmanager_address("127.0.0.1", &remote, Path::new("/etc/corestream/workers")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(msg.contains("/etc/corestream/workers:4 names the host node2"), "{msg}");
        assert!(check_jobmanager_address("localhost", &remote, Path::new("w")).is_err());
        assert!(check_jobmanager_address("10.0.0.5", &remote, Path::new("w")).is_ok());
        assert!(check_jobmanager_address("jm.example.org", &remote, Path::new("w")).is_ok());
    }

    #[test]
    fn environment_settings_do_not_reach_remote_taskmanagers() {
        let keys = vec!["PATH".to_string(), "CORESTREAM_CONF_SECURITY_CLUSTER_SECRET".to_string()];
        let (local, _) = plan_taskmanagers(&[worker("localhost", None, 1)], "me", None, 0);
        assert!(remote_env_warning(&keys, &local).is_none());
        let (remote, _) = plan_taskmanagers(&[worker("node2", None, 1)], "me", None, 0);
        let w = remote_env_warning(&keys, &remote).unwrap();
        assert!(w.starts_with("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET (and any"), "{w}");
        assert!(remote_env_warning(&["PATH".to_string()], &remote).is_none());
    }

    #[test]
    fn taskmanager_arguments() {
        let plan = TaskManagerPlan {
            index: 2,
            host: "n".into(),
            local: false,
            slots: Some(4),
            core_offset: 4,
            data_port: Some(6125),
            line: 3,
        };
        let config = vec![OsString::from("--config"), OsString::from("/etc/corestream/corestream.toml")];
        let args: Vec<String> =
            taskmanager_args(&config, &plan).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "taskmanager",
                "--config",
                "/etc/corestream/corestream.toml",
                "--slots",
                "4",
                "--core-offset",
                "4",
                "-D",
                "taskmanager.data.port=6125"
            ]
        );
        let plan = TaskManagerPlan { slots: None, core_offset: 0, data_port: None, ..plan };
        assert_eq!(taskmanager_args(&[], &plan), vec![OsString::from("taskmanager")]);
        assert_eq!(taskmanager_log_name(&TaskManagerPlan { host: "::1".into(), ..plan }), "taskmanager-2-__1.log");
    }
}
