//! `--processes N`: one job on N TaskManager processes of this binary on one machine
//! (application mode). The process the user started is TaskManager 0; it re-executes its own
//! binary with the same arguments N − 1 times, with `CORESTREAM_TASK_MANAGER=i/N` in the
//! environment and one end of a Unix socket pair as standard input: the control channel.
//! Every process builds the same job from the same arguments, starts a cluster over its share
//! of the job slots ([`Distribution`]) and deploys only its own tasks; records between
//! processes go over the engine's TCP data plane, never over the control channel.
//!
//! Control protocol: text lines of space-separated tokens; inside a token `\\`, space, tab,
//! CR and LF are written `\\\\`, `\s`, `\t`, `\r`, `\n`. A line holds at most
//! [`LINE_BYTES_MAX`] bytes.
//!
//! ```text
//! child  → parent  HELLO <tm> <pid> <data addr>          once, before anything else
//! parent → child   PEERS <addr 0> <addr 1> … <addr N-1>   once, after every HELLO
//! child  → parent  OP <node> <records in> <records out> <operator name>
//!                  NET <frames in> <frames out> <buffers in> <buffers out> <bytes in>
//!                      <bytes out> <credit announcements> <remote credit stalls> <peer>
//!                  POOL <peak buffers in use>
//!                  WARN <subtask> <count> <operator> <message>
//!                  LATENCY <sink node> <source subtask> <V2 histogram, hex> <sink name>
//!                  OUT <key> <value>                      example-specific figures
//!                  DONE | FAILED <message>                last line
//! ```
//!
//! Placement (hidden options, for tests across network namespaces): TaskManager 0 binds its
//! data listener to `--tm-bind`, the others to `--child-bind` (both default to 127.0.0.1:0), and
//! `--child-netns NAME` starts the others as `ip netns exec NAME <this binary> <argv>`; `ip`
//! execs the binary in the same process, so the pid in HELLO, the control socket on standard
//! input and the parent-death signal all carry over. Only TaskManager 0 starts processes, so
//! the others ignore `--child-netns` in the argv they share.
//!
//! Invariants: only TaskManager 0 prints results (children report them as lines above); every
//! wait is bounded; every child is killed and reaped on every path out of the parent
//! ([`Children`]'s `Drop`); a child dies with its parent (`PR_SET_PDEATHSIG`, set between fork
//! and exec by the thread that spawns it, which is the parent's main thread and lives as long as
//! the process). A child's results are partial (its local subtasks); the parent adds them up.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::CommandFactory;
use corestream::{
    ClusterConfig, ConnectionSummary, Distribution, JobHandle, JobResult, JobWarning, LatencySummary, LocalCluster,
    NetConfig, SessionStats, StagedOutputs, StreamEnvironment,
};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::args::Common;
use crate::run::RunCommand;
use crate::{Cli, Command};

/// Set in a child's environment to `i/N`: it is TaskManager i of N.
pub const TASK_MANAGER_ENV: &str = "CORESTREAM_TASK_MANAGER";
/// Longest control line, in bytes (a latency histogram is the largest).
pub const LINE_BYTES_MAX: usize = 1 << 20;
/// How long the parent waits for every child's HELLO.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child waits for PEERS after its HELLO (the parent waits for the slowest sibling).
const PEERS_TIMEOUT: Duration = Duration::from_secs(HELLO_TIMEOUT.as_secs() + 30);
/// How long the parent waits for the children's reports after its own part failed.
const FAILED_REPORT_WAIT: Duration = Duration::from_secs(3);
/// How long a child may take to exit after its last control line, or to be reaped after a kill.
const EXIT_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// A histogram as one control-line token: its V2 serialization in hex.
pub fn histogram_to_hex(h: &hdrhistogram::Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).map_err(|e| anyhow!("cannot serialize a histogram: {e:?}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The bytes of a hex token, or what is wrong with it ("has an odd number of hex digits",
/// "is not hex").
pub fn from_hex(hex: &str) -> Result<Vec<u8>, &'static str> {
    if !hex.len().is_multiple_of(2) {
        return Err("has an odd number of hex digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or("is not hex")
}

/// Refuses `--processes N` (N > 1) on commands that run in one process: exit status 2, like
/// any other invalid option. Commands not named here either take no `Common` options or run
/// through [`run`]; `Common::cluster` refuses the option as well, for any command that starts
/// a one-process cluster.
pub fn check_supported(command: &Command) -> Result<(), clap::Error> {
    use crate::bench::BenchCommand as B;
    let (name, common) = match command {
        Command::Run(RunCommand::SumByKey { .. } | RunCommand::Wordcount { .. }) | Command::Demo(_) => return Ok(()),
        Command::Profile(_)
        | Command::Jobmanager(_)
        | Command::Taskmanager(_)
        | Command::Client(_)
        | Command::Cluster(_) => return Ok(()),
        Command::Run(RunCommand::WindowAgg(args)) => ("run window-agg", &args.common),
        Command::Plan { common, .. } => ("plan", common),
        Command::Bench(cmd) => match cmd {
            B::Passthrough { common, .. } => ("bench passthrough", common),
            B::KeyedSum { common, .. } => ("bench keyed-sum", common),
            B::Window { common, .. } => ("bench window", common),
            B::Nexmark { common, .. } => ("bench nexmark", common),
            _ => return Ok(()),
        },
    };
    if common.processes > 1 {
        return Err(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "`corestream {name}` runs in one process and does not take --processes {}; only \
                 `corestream run sum-by-key`, `corestream run wordcount`, `corestream bench network` and `corestream bench latency` run across TaskManager processes",
                common.processes
            ),
        ));
    }
    Ok(())
}

/// Example-specific figures of one process, e.g. `("checksum", "00ab…")`.
pub type Outputs = Vec<(String, String)>;

/// The job's result as TaskManager 0 prints it: counters summed over the processes.
#[derive(Debug)]
pub struct Merged {
    /// TaskManager 0's result with every process's operator counts, warnings and latency
    /// markers added in; `network` is TaskManager 0's own connections.
    pub result: JobResult,
    /// Outputs of each TaskManager, by index.
    pub outputs: Vec<Outputs>,
    /// Connections as each TaskManager saw them, by index.
    pub network: Vec<Vec<ConnectionSummary>>,
    /// Pool peak of each TaskManager, by index.
    pub pool_peaks: Vec<u64>,
}

impl Merged {
    /// The values of output `key` of every process.
    pub fn outputs_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.outputs.iter().flatten().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// One line per connection between two TaskManagers, from the lower index's side, with the
    /// credit stalls of the producers on each side and the data address the lower index dialed;
    /// then the pool peak of each TaskManager.
    pub fn network_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (tm, connections) in self.network.iter().enumerate() {
            for c in connections {
                let peer = peer_index(&c.peer);
                if peer.is_some_and(|p| p < tm) {
                    continue;
                }
                let stalls_in = peer
                    .and_then(|p| self.network.get(p))
                    .and_then(|theirs| theirs.iter().find(|t| peer_index(&t.peer) == Some(tm)))
                    .map_or(0, |t| t.remote_credit_stalls);
                let peer_name = peer.map_or_else(|| c.peer.clone(), |p| format!("TaskManager {p}"));
                let dialed = match (peer, peer_address(&c.peer)) {
                    (Some(_), Some(addr)) => format!(", peer data address {addr}"),
                    _ => String::new(),
                };
                lines.push(format!(
                    "network: TaskManager {tm} <-> {peer_name}: {} buffers / {:.1} MB out, {} buffers / {:.1} MB in, \
                     credit stalls {} out / {stalls_in} in{dialed}",
                    c.stats.buffers_out,
                    c.stats.bytes_out as f64 / 1e6,
                    c.stats.buffers_in,
                    c.stats.bytes_in as f64 / 1e6,
                    c.remote_credit_stalls,
                ));
            }
        }
        let peaks: Vec<String> =
            self.pool_peaks.iter().enumerate().map(|(tm, peak)| format!("TaskManager {tm} {peak}")).collect();
        lines.push(format!("network: pool peak in use (buffers): {}", peaks.join(", ")));
        lines
    }
}

/// Runs this process's part of job `name` and returns the merged result in TaskManager 0, or
/// `None` in the other TaskManagers, whose results went to TaskManager 0. `build` adds the job
/// to the environment and returns what computes this process's outputs once its part ended.
///
/// A child that fails reports the error to TaskManager 0, which prints it, and exits with
/// status 1 without printing it again.
pub fn run<B, O>(common: &Common, name: &str, build: B) -> anyhow::Result<Option<Merged>>
where
    B: FnOnce(&mut StreamEnvironment) -> O,
    O: FnOnce() -> anyhow::Result<Outputs>,
{
    common.require_valid_placement();
    let index = task_manager_index(common.processes)?;
    total_slots(common.processes, common.slots, common.parallelism)?;
    if index == 0 {
        let argv = std::env::args_os().collect::<Vec<_>>();
        let parsed = <Cli as clap::Parser>::try_parse_from(&argv).map(|cli| cli.command);
        if !matches!(parsed, Ok(Command::Run(_) | Command::Bench(_))) {
            bail!(
                "--processes {} re-executes this program's command line in each TaskManager, so the job must be \
                 this program's own command (not one run by `corestream profile`)",
                common.processes
            );
        }
        run_parent(common, name, &argv[1..], build).map(Some)
    } else {
        let mut control = match Control::adopt_stdin() {
            Ok(c) => c,
            Err(e) => return Err(e.context(format!("TaskManager {index} cannot reach TaskManager 0"))),
        };
        match run_child(common, index, name, &mut control, build) {
            Ok(lines) => {
                for line in lines.iter().map(String::as_str).chain(["DONE"]) {
                    control.send(line).context("cannot report the result to TaskManager 0")?;
                }
                Ok(None)
            }
            Err(e) => {
                let sent = control.send(&encode(&["FAILED", &format!("{e:#}")]));
                if sent.is_ok() {
                    std::process::exit(1);
                }
                Err(e)
            }
        }
    }
}

/// Whether this process is the one the user started (TaskManager 0), not one started by
/// [`run`]; work that must happen once per job, such as a baseline measurement, happens here.
pub fn is_task_manager_0() -> bool {
    std::env::var_os(TASK_MANAGER_ENV).is_none()
}

/// This process's TaskManager index: 0 without [`TASK_MANAGER_ENV`], else the `i` of `i/N`.
fn task_manager_index(processes: u32) -> anyhow::Result<u32> {
    if is_task_manager_0() {
        return Ok(0);
    }
    match std::env::var(TASK_MANAGER_ENV) {
        Ok(v) => parse_role(&v, processes).map_err(|e| anyhow!("{TASK_MANAGER_ENV}={v}: {e}")),
        Err(e) => bail!("{TASK_MANAGER_ENV} is not i/N: {e}"),
    }
}

/// Parses `i/N` of a child (1 ≤ i < N, N = `--processes`).
fn parse_role(value: &str, processes: u32) -> Result<u32, String> {
    let (i, n) = value.split_once('/').ok_or("expected i/N, e.g. 1/2")?;
    let i: u32 = i.parse().map_err(|_| format!("'{i}' is not a TaskManager index"))?;
    let n: u32 = n.parse().map_err(|_| format!("'{n}' is not a number of TaskManagers"))?;
    if n != processes {
        return Err(format!("{n} TaskManagers, but --processes is {processes}"));
    }
    if i == 0 || i >= n {
        return Err(format!("a started TaskManager has an index in 1..{n}"));
    }
    Ok(i)
}

/// Job slots over all processes: `--parallelism`, else N × `--slots` (1 slot per process by
/// default).
pub fn total_slots(processes: u32, slots: Option<u32>, parallelism: Option<u32>) -> anyhow::Result<u32> {
    let per_process = slots.unwrap_or(1);
    let available = per_process
        .checked_mul(processes)
        .ok_or_else(|| anyhow!("--slots {per_process} × --processes {processes} is too many slots"))?;
    match (slots, parallelism) {
        (Some(_), Some(p)) if p > available => bail!(
            "--parallelism {p} needs {p} job slots but --processes {processes} × --slots {per_process} gives {available}"
        ),
        (_, Some(p)) => Ok(p),
        (_, None) => Ok(available),
    }
}

fn cluster_config(
    common: &Common,
    index: u32,
    peers: Vec<SocketAddr>,
    listener: TcpListener,
) -> anyhow::Result<ClusterConfig> {
    let total = total_slots(common.processes, common.slots, common.parallelism)?;
    let distribution = Distribution::new(index, common.processes, total, peers)?;
    let mut net = NetConfig::default();
    if let Some(timeout) = common.heartbeat_timeout {
        net.heartbeat_timeout = timeout;
        net.heartbeat_interval = timeout / 5;
    }
    Ok(ClusterConfig {
        slots: None,
        network_buffers: common.network_buffers,
        credit: common.credit(),
        spin_before_park: common.spin_before_park,
        distribution: Some(distribution),
        data_listener: Some(Arc::new(listener)),
        net,
        ..ClusterConfig::default()
    })
}

/// Binds `addr` (`option` names where it came from, for the error), or 127.0.0.1:0 if `None`.
fn bind_data_listener(addr: Option<SocketAddr>, option: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let (want, from) = match addr {
        Some(a) => (a, format!(" (given by {option})")),
        None => (SocketAddr::from(([127, 0, 0, 1], 0)), String::new()),
    };
    let listener = TcpListener::bind(want).with_context(|| format!("cannot bind the data address {want}{from}"))?;
    let addr = listener.local_addr().with_context(|| format!("cannot read the data address bound at {want}"))?;
    Ok((listener, addr))
}

fn heartbeat_timeout(common: &Common) -> Duration {
    common.heartbeat_timeout.unwrap_or(NetConfig::default().heartbeat_timeout)
}

// ---------------------------------------------------------------------------------------------
// Child side

/// A child's end of the control channel (its standard input).
struct Control {
    writer: UnixStream,
    reader: BufReader<io::Take<UnixStream>>,
}

impl Control {
    /// Takes standard input as the control channel after checking that it is a socket whose
    /// other end was made by this process's parent.
    fn adopt_stdin() -> anyhow::Result<Self> {
        // SAFETY: an all-zero `stat` is a valid value, and fstat only writes into it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on fd 0 with a pointer to a live `stat`.
        if unsafe { libc::fstat(0, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            bail!(
                "{TASK_MANAGER_ENV} is set but standard input is not a socket: this variable is for the processes \
                 `--processes` starts; unset it"
            );
        }
        // SAFETY: fd 0 is open (fstat succeeded) and nothing else in this process uses standard
        // input; dup gives this function its own descriptor to own.
        let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("cannot duplicate standard input");
        }
        // SAFETY: `fd` was just returned by fcntl and is owned by nobody else.
        let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let peer = peer_pid(&stream).context("cannot read the credentials of the control socket")?;
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        if peer != parent {
            bail!("the control socket was made by process {peer} but the parent is {parent}: the parent has exited");
        }
        let reader = BufReader::new(stream.try_clone().context("cannot clone the control socket")?.take(0));
        Ok(Self { writer: stream, reader })
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        assert!(!line.contains('\n') && line.len() < LINE_BYTES_MAX, "control lines are escaped and bounded");
        self.writer.write_all(format!("{line}\n").as_bytes())
    }

    /// The next line, waiting at most `timeout`; `None` at end of stream.
    fn recv(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        self.reader.get_ref().get_ref().set_read_timeout(Some(timeout))?;
        read_line(&mut self.reader).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => anyhow!("no message within {timeout:?}"),
            _ => anyhow!(e),
        })
    }
}

fn peer_pid(stream: &UnixStream) -> io::Result<u32> {
    // SAFETY: an all-zero `ucred` is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which lives for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid as u32)
}

/// One line without its newline, at most [`LINE_BYTES_MAX`] bytes; `None` at end of stream.
fn read_line(reader: &mut BufReader<io::Take<UnixStream>>) -> io::Result<Option<String>> {
    reader.get_mut().set_limit(LINE_BYTES_MAX as u64 + 1);
    let mut line = String::new();
    let n = reader.read_line(&mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        let reason = if n > LINE_BYTES_MAX { "longer than the limit" } else { "cut off by the end of the stream" };
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("control line {reason}: {:.80}", line)));
    }
    line.pop();
    Ok(Some(line))
}

fn run_child<B, O>(
    common: &Common,
    index: u32,
    name: &str,
    control: &mut Control,
    build: B,
) -> anyhow::Result<Vec<String>>
where
    B: FnOnce(&mut StreamEnvironment) -> O,
    O: FnOnce() -> anyhow::Result<Outputs>,
{
    let (listener, addr) = bind_data_listener(common.child_bind, "--child-bind")
        .with_context(|| format!("TaskManager {index} cannot listen for data"))?;
    let hello = encode(&["HELLO", &index.to_string(), &std::process::id().to_string(), &addr.to_string()]);
    control.send(&hello).context("cannot send HELLO to TaskManager 0")?;
    let line = control
        .recv(PEERS_TIMEOUT)
        .context("waiting for PEERS from TaskManager 0")?
        .ok_or_else(|| anyhow!("TaskManager 0 closed the control channel before sending PEERS"))?;
    let peers = match decode(&line)? {
        Message::Peers(peers) => peers,
        other => bail!("expected PEERS from TaskManager 0, got {other:?} (line '{line}')"),
    };
    if peers.len() != common.processes as usize || peers[index as usize] != addr {
        bail!("PEERS from TaskManager 0 does not list this TaskManager's data address {addr} at {index}: '{line}'");
    }
    let cluster = LocalCluster::start(cluster_config(common, index, peers, listener)?)
        .with_context(|| format!("TaskManager {index} cannot start its cluster"))?;
    let mut env = common.environment(&cluster);
    let outputs = build(&mut env);
    let result = env.execute_async(name)?.join()?;
    let outputs = outputs()?;
    Ok(report_lines(&result, &outputs))
}

/// The lines a child sends for its part of the job, without the final DONE.
fn report_lines(result: &JobResult, outputs: &Outputs) -> Vec<String> {
    let mut lines = Vec::new();
    for o in &result.operators {
        lines.push(encode(&[
            "OP",
            &o.node.to_string(),
            &o.records_in.to_string(),
            &o.records_out.to_string(),
            &o.name,
        ]));
    }
    for c in &result.network {
        let s = &c.stats;
        let numbers = [
            s.frames_in,
            s.frames_out,
            s.buffers_in,
            s.buffers_out,
            s.bytes_in,
            s.bytes_out,
            s.credit_announcements,
            c.remote_credit_stalls,
        ]
        .map(|n| n.to_string());
        let mut tokens = vec!["NET"];
        tokens.extend(numbers.iter().map(String::as_str));
        tokens.push(&c.peer);
        lines.push(encode(&tokens));
    }
    lines.push(encode(&["POOL", &result.pool_peak_in_use.to_string()]));
    for w in &result.warnings {
        lines.push(encode(&["WARN", &w.subtask.to_string(), &w.count.to_string(), &w.operator, &w.message]));
    }
    for l in &result.latency {
        match histogram_to_hex(&l.histogram) {
            Ok(hex) => {
                lines.push(encode(&[
                    "LATENCY",
                    &l.sink_node.to_string(),
                    &l.source_subtask.to_string(),
                    &hex,
                    &l.sink,
                ]));
            }
            Err(e) => tracing::warn!(sink = %l.sink, "latency histogram not reported: {e}"),
        }
    }
    for (key, value) in outputs {
        lines.push(encode(&["OUT", key, value]));
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Parent side

fn run_parent<B, O>(common: &Common, name: &str, args: &[std::ffi::OsString], build: B) -> anyhow::Result<Merged>
where
    B: FnOnce(&mut StreamEnvironment) -> O,
    O: FnOnce() -> anyhow::Result<Outputs>,
{
    let (listener, addr) =
        bind_data_listener(common.tm_bind, "--tm-bind").context("TaskManager 0 cannot listen for data")?;
    let mut children = Children::spawn(common.processes, args, common.child_netns.as_deref())?;
    let mut peers = vec![addr];
    peers.extend(children.await_hellos()?);
    children.send_peers(&peers)?;
    let cluster = LocalCluster::start(cluster_config(common, 0, peers, listener)?)
        .context("TaskManager 0 cannot start its cluster")?;
    let mut env = common.environment(&cluster);
    let outputs = build(&mut env);
    let local = match env.execute_async(name) {
        Ok(handle) => children.watch(handle, heartbeat_timeout(common)),
        Err(e) => Err(anyhow!(e)),
    };
    let (local, staged) = match local.and_then(|(result, staged)| Ok(((result, outputs()?), staged))) {
        Ok((local, staged)) => (Ok(local), staged),
        Err(e) => (Err(e), StagedOutputs::default()),
    };
    let report_wait = match &local {
        Ok(_) => 2 * heartbeat_timeout(common) + Duration::from_secs(10),
        Err(_) => FAILED_REPORT_WAIT,
    };
    children.await_reports(report_wait);
    children.reap();
    let (result, outputs) = children.verdict(local)?;
    // What TaskManager 0's sinks staged becomes visible only once every TaskManager succeeded.
    staged.commit()?;
    Ok(children.merge(result, outputs))
}

/// What the parent knows of one child.
#[derive(Debug)]
enum State {
    Starting,
    Running {
        data: SocketAddr,
    },
    Done,
    /// The child reported that its part failed.
    Failed(String),
    /// The child ended, closed its channel or broke the protocol before DONE or FAILED; empty
    /// when its exit status says it all.
    Lost(String),
    /// The child sent no DONE or FAILED in time after TaskManager 0's part ended.
    Unresponsive(String),
}

struct ChildProcess {
    tm: u32,
    process: Child,
    writer: UnixStream,
    state: State,
    report: Report,
    exit: Option<ExitStatus>,
    /// TaskManager 0 killed it (its exit status then says nothing about why it ended).
    killed: bool,
    /// Its exit status was collected by `wait`, so it is no zombie.
    reaped: bool,
}

impl ChildProcess {
    fn label(&self) -> String {
        format!("TaskManager {} (pid {})", self.tm, self.process.id())
    }

    fn ended(&self) -> bool {
        matches!(self.state, State::Done | State::Failed(_) | State::Lost(_) | State::Unresponsive(_))
    }

    /// Sends SIGKILL unless the process has already ended.
    fn kill(&mut self) {
        if self.exit.is_none() && wait_for_exit(&self.process, Duration::ZERO).is_none() {
            let _ = self.process.kill();
            self.killed = true;
        }
    }
}

enum Event {
    Line(String),
    Closed(Option<io::Error>),
}

/// The children of TaskManager 0; dropping it kills and reaps every child still running.
struct Children {
    processes: Vec<ChildProcess>,
    events: mpsc::Receiver<(usize, Event)>,
    /// The `ip netns exec NAME` prefix the children were started with, if any.
    netns_prefix: Option<String>,
}

impl Children {
    /// Starts TaskManagers 1..`count` with `args`, in network namespace `netns` if given.
    fn spawn(count: u32, args: &[std::ffi::OsString], netns: Option<&str>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program's executable to start TaskManagers")?;
        let how = match netns {
            Some(name) => format!("ip netns exec {name} {}", exe.display()),
            None => exe.display().to_string(),
        };
        let (tx, events) = mpsc::channel();
        let netns_prefix = netns.map(|name| format!("ip netns exec {name}"));
        let mut children = Children { processes: Vec::new(), events, netns_prefix };
        let parent = std::process::id();
        for tm in 1..count {
            let (ours, theirs) = UnixStream::pair().context("cannot create a control socket pair")?;
            let mut command = match netns {
                Some(name) => {
                    let mut c = std::process::Command::new("ip");
                    c.args(["netns", "exec", name]).arg(&exe);
                    c
                }
                None => std::process::Command::new(&exe),
            };
            command
                .args(args)
                .env(TASK_MANAGER_ENV, format!("{tm}/{count}"))
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
            // SAFETY: the hook runs in the child between fork and exec and calls only
            // async-signal-safe functions (prctl, getppid) and allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::getppid() as u32 != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                })
            };
            let process = command.spawn().with_context(|| format!("cannot start TaskManager {tm} ({how})"))?;
            let reader = ours.try_clone().context("cannot clone a control socket")?;
            let slot = children.processes.len();
            children.processes.push(ChildProcess {
                tm,
                process,
                writer: ours,
                state: State::Starting,
                report: Report::default(),
                exit: None,
                killed: false,
                reaped: false,
            });
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("control-tm{tm}"))
                .spawn(move || read_control(slot, reader, tx))
                .context("cannot start a control reader thread")?;
        }
        Ok(children)
    }

    /// The data address of every child, by index, once all have said HELLO.
    fn await_hellos(&mut self) -> anyhow::Result<Vec<SocketAddr>> {
        let deadline = Instant::now() + HELLO_TIMEOUT;
        while self.processes.iter().any(|c| matches!(c.state, State::Starting)) {
            self.poll_events(deadline.saturating_duration_since(Instant::now()).min(POLL));
            if let Some(c) = self.processes.iter().find(|c| c.ended()) {
                let via = self.netns_prefix.as_ref().map_or(String::new(), |p| format!(" (started through `{p}`)"));
                bail!("{} did not start{via}: {}", c.label(), self.describe_end(c));
            }
            if Instant::now() >= deadline {
                let late: Vec<String> =
                    self.processes.iter().filter(|c| matches!(c.state, State::Starting)).map(|c| c.label()).collect();
                bail!("{} did not say HELLO within {HELLO_TIMEOUT:?}", late.join(", "));
            }
        }
        Ok(self
            .processes
            .iter()
            .map(|c| match c.state {
                State::Running { data } => data,
                _ => unreachable!("every child said HELLO"),
            })
            .collect())
    }

    fn send_peers(&mut self, peers: &[SocketAddr]) -> anyhow::Result<()> {
        let addrs: Vec<String> = peers.iter().map(SocketAddr::to_string).collect();
        let mut tokens = vec!["PEERS"];
        tokens.extend(addrs.iter().map(String::as_str));
        let line = format!("{}\n", encode(&tokens));
        for c in &mut self.processes {
            let label = c.label();
            c.writer.write_all(line.as_bytes()).with_context(|| format!("cannot send PEERS to {label}"))?;
        }
        Ok(())
    }

    /// Waits for TaskManager 0's part of the job; cancels it as soon as a child is lost or
    /// reports a failure, and gives up on it if it has not stopped `grace` after that.
    fn watch(&mut self, handle: JobHandle, grace: Duration) -> anyhow::Result<(JobResult, StagedOutputs)> {
        let mut cancelled_at: Option<Instant> = None;
        while !handle.is_finished() {
            self.poll_events(POLL);
            if cancelled_at.is_none() {
                if let Some(c) = self.processes.iter().find(|c| matches!(c.state, State::Lost(_) | State::Failed(_))) {
                    tracing::info!(tm = c.tm, "cancelling TaskManager 0's part of the job: {:?}", c.state);
                    handle.cancel();
                    cancelled_at = Some(Instant::now());
                }
            }
            if cancelled_at.is_some_and(|at| at.elapsed() > grace) {
                bail!("TaskManager 0's part of the job did not stop within {grace:?} of being cancelled");
            }
        }
        let joined = handle.join_staged()?;
        if cancelled_at.is_some() {
            bail!("TaskManager 0's part of the job was cancelled");
        }
        Ok(joined)
    }

    /// Waits until every child has sent DONE or FAILED or was lost, at most `limit`.
    fn await_reports(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.processes.iter().all(ChildProcess::ended) && Instant::now() < deadline {
            self.poll_events(POLL);
        }
        for c in self.processes.iter_mut().filter(|c| !c.ended()) {
            c.state = State::Unresponsive(format!("sent no result within {limit:?} of TaskManager 0's part ending"));
        }
    }

    /// Waits for every child to exit (a child that reported exits by itself); kills the rest.
    fn reap(&mut self) {
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            for c in self.processes.iter_mut().filter(|c| !c.reaped) {
                if matches!(c.state, State::Lost(_) | State::Unresponsive(_)) {
                    c.kill();
                }
                if let Ok(Some(status)) = c.process.try_wait() {
                    c.exit = Some(status);
                    c.reaped = true;
                }
            }
            if self.processes.iter().all(|c| c.reaped) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL.min(Duration::from_millis(10)));
        }
        for c in self.processes.iter_mut().filter(|c| !c.reaped) {
            c.kill();
            c.exit = c.process.wait().ok().or(c.exit);
            c.reaped = true;
            if matches!(c.state, State::Done) {
                // Its result is complete; only its shutdown hung.
                tracing::warn!(
                    tm = c.tm,
                    "TaskManager {} reported its result but did not exit within {EXIT_WAIT:?}",
                    c.tm
                );
            }
        }
    }

    /// TaskManager 0's result if every part succeeded, else the error that names the first
    /// lost child, or a child that hung (the others timed out waiting for it and it sent no
    /// result), or the failure of TaskManager 0, or the failure a child reported, or the first
    /// child that did not report. A failure that only echoes another TaskManager's ("the job
    /// failed on TaskManager k: …") is not taken for the cause, and no message is repeated.
    fn verdict(&self, local: anyhow::Result<(JobResult, Outputs)>) -> anyhow::Result<(JobResult, Outputs)> {
        let lost = self.processes.iter().find(|c| matches!(c.state, State::Lost(_)));
        let silent = self.processes.iter().find(|c| matches!(c.state, State::Unresponsive(_)));
        let failed = self.processes.iter().find_map(|c| match &c.state {
            State::Failed(m) => Some((c, m)),
            _ => None,
        });
        if lost.is_none() {
            let mut messages: Vec<String> = local.as_ref().err().map(|e| format!("{e:#}")).into_iter().collect();
            messages.extend(self.processes.iter().filter_map(|c| match &c.state {
                State::Failed(m) => Some(m.clone()),
                _ => None,
            }));
            if let Some(hung) = hung_peer(&messages, |tm| {
                self.processes.iter().any(|c| c.tm == tm && matches!(c.state, State::Unresponsive(_)))
            }) {
                let c = self.processes.iter().find(|c| c.tm == hung.tm).expect("hung_peer names a silent child");
                return Err(anyhow!(hung.timeout).context(format!(
                    "{} hung: the other TaskManagers heard nothing from it for the heartbeat timeout, and it {}",
                    c.label(),
                    self.describe_end(c)
                )));
            }
        }
        match (local, lost, failed) {
            (local, Some(c), _) => {
                let died = format!("{} {}", c.label(), self.describe_end(c));
                Err(match local {
                    Err(e) => e.context(died),
                    Ok(_) => anyhow!(died),
                })
            }
            // The local error usually carries the child's message already (PeerFailed), or the
            // child failed because TaskManager 0 did and says so.
            (Err(e), None, Some((_, m))) if format!("{e:#}").contains(m.as_str()) => Err(e),
            (Err(e), None, Some((_, m))) if m.contains(&format!("{e:#}")) => Err(e),
            (Err(e), None, Some((c, m))) => Err(e.context(format!("TaskManager {} failed: {m}", c.tm))),
            (Err(e), None, None) => Err(e),
            (Ok(_), None, Some((c, m))) => Err(anyhow!("TaskManager {} failed: {m}", c.tm)),
            (Ok(local), None, None) => match silent {
                Some(c) => Err(anyhow!("{} {}", c.label(), self.describe_end(c))),
                None => Ok(local),
            },
        }
    }

    /// How a child ended, from its state and exit status: "was killed by signal 9 (…)".
    fn describe_end(&self, c: &ChildProcess) -> String {
        let why = match &c.state {
            State::Lost(why) | State::Failed(why) | State::Unresponsive(why) => why.clone(),
            _ => String::new(),
        };
        if c.killed {
            let why = if why.is_empty() { "closed its control channel" } else { why.as_str() };
            return format!("{why}; TaskManager 0 killed it");
        }
        let exit = c.exit.or_else(|| wait_for_exit(&c.process, EXIT_WAIT));
        match (exit, why.is_empty()) {
            (Some(status), true) => describe_status(status),
            (Some(status), false) => format!("{} ({why})", describe_status(status)),
            (None, true) => "closed its control channel".to_string(),
            (None, false) => why,
        }
    }

    fn merge(&self, mut result: JobResult, outputs: Outputs) -> Merged {
        let mut merged_outputs = vec![outputs];
        let mut network = vec![std::mem::take(&mut result.network)];
        let mut pool_peaks = vec![result.pool_peak_in_use];
        for c in &self.processes {
            c.report.add_to(&mut result);
            merged_outputs.push(c.report.outputs.clone());
            network.push(c.report.network.clone());
            pool_peaks.push(c.report.pool_peak_in_use);
        }
        result.network = network[0].clone();
        Merged { result, outputs: merged_outputs, network, pool_peaks }
    }

    fn poll_events(&mut self, timeout: Duration) {
        let mut next = self.events.recv_timeout(timeout).ok();
        while let Some((slot, event)) = next {
            self.handle(slot, event);
            next = self.events.try_recv().ok();
        }
    }

    fn handle(&mut self, slot: usize, event: Event) {
        let c = &mut self.processes[slot];
        if c.ended() {
            return;
        }
        let line = match event {
            Event::Line(line) => line,
            Event::Closed(error) => {
                let how = error.map_or(String::new(), |e| format!("control channel: {e}"));
                c.exit = wait_for_exit(&c.process, Duration::from_secs(1)).or(c.exit);
                c.state = State::Lost(how);
                c.kill();
                return;
            }
        };
        let message = match decode(&line) {
            Ok(m) => m,
            Err(e) => {
                c.state = State::Lost(format!("sent a malformed control line '{:.200}': {e}", line));
                c.kill();
                return;
            }
        };
        match (&c.state, message) {
            (State::Starting, Message::Hello { tm, pid, data }) if tm == c.tm && pid == c.process.id() => {
                eprintln!("corestream: TaskManager {tm} started (pid {pid}, data {data})");
                c.state = State::Running { data };
            }
            (State::Running { .. }, Message::Done) => c.state = State::Done,
            (_, Message::Failed(message)) => c.state = State::Failed(message),
            (State::Running { .. }, m) if c.report.add(&m) => {}
            (state, m) => {
                c.state = State::Lost(format!("sent '{:.200}' ({m:?}) while {state:?}", line));
                c.kill();
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.processes.iter_mut().filter(|c| !c.reaped) {
            let _ = c.process.kill();
            let _ = c.process.wait();
        }
    }
}

fn read_control(slot: usize, stream: UnixStream, tx: mpsc::Sender<(usize, Event)>) {
    let mut reader = BufReader::new(stream.take(0));
    loop {
        let event = match read_line(&mut reader) {
            Ok(Some(line)) => Event::Line(line),
            Ok(None) => Event::Closed(None),
            Err(e) => Event::Closed(Some(e)),
        };
        let last = matches!(event, Event::Closed(_));
        if tx.send((slot, event)).is_err() || last {
            return;
        }
    }
}

/// Polls for the exit status of `process` for at most `limit` without reaping it twice.
fn wait_for_exit(process: &Child, limit: Duration) -> Option<ExitStatus> {
    let pid = process.id() as libc::pid_t;
    let deadline = Instant::now() + limit;
    loop {
        // SAFETY: waitid with WNOWAIT only reads the status of our own child, leaving it
        // waitable for `Child::wait`; `info` lives for the call.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe {
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
        };
        // SAFETY: `si_pid` and `si_status` are valid to read after waitid filled `info`.
        let (si_pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if rc == 0 && si_pid == pid {
            let raw = match info.si_code {
                libc::CLD_EXITED => (status & 0xff) << 8,
                libc::CLD_DUMPED => status | 0x80,
                _ => status,
            };
            return Some(ExitStatus::from_raw(raw));
        }
        if rc != 0 || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        format!("was killed by signal {signal} ({})", signal_name(signal))
    } else {
        match status.code() {
            Some(0) => "exited with status 0 before reporting a result".to_string(),
            Some(code) => format!("exited with status {code}"),
            None => format!("ended ({status})"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// A TaskManager that hung, as the failures of the others tell it.
#[derive(Debug, PartialEq)]
struct Hung {
    tm: u32,
    /// The timeout as one of them reported it: `connection to TaskManager <tm> (…) timed out: …`.
    timeout: String,
}

/// The first TaskManager that a failure in `messages` timed out waiting for and that
/// `is_silent` (it sent no result either), with that timeout's own message (any
/// `the job failed on …:` prefix of a failure passed on between TaskManagers dropped).
fn hung_peer(messages: &[String], is_silent: impl Fn(u32) -> bool) -> Option<Hung> {
    const TIMEOUT: &str = "connection to TaskManager ";
    messages.iter().find_map(|m| {
        let at = m.find(TIMEOUT)?;
        let timeout = &m[at..];
        let tm = u32::try_from(peer_index(timeout.strip_prefix("connection to ")?)?).ok()?;
        let (_, after) = timeout.split_once(") timed out: ")?;
        // One timeout, not a chain that repeats it.
        let end = after.find(": ").map_or(timeout.len(), |i| timeout.len() - after.len() + i);
        (tm != 0 && is_silent(tm)).then(|| Hung { tm, timeout: timeout[..end].to_string() })
    })
}

/// The index of a peer named `TaskManager <i> (…)`.
fn peer_index(peer: &str) -> Option<usize> {
    let rest = peer.strip_prefix("TaskManager ")?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// The address in a peer named `TaskManager <i> (<address>)`.
fn peer_address(peer: &str) -> Option<&str> {
    let (_, rest) = peer.split_once(" (")?;
    rest.strip_suffix(')')
}

// ---------------------------------------------------------------------------------------------
// Protocol: pure encoding, decoding and merging

/// A decoded control line.
#[derive(Debug, Clone, PartialEq)]
enum Message {
    Hello { tm: u32, pid: u32, data: SocketAddr },
    Peers(Vec<SocketAddr>),
    Op { node: usize, records_in: u64, records_out: u64, name: String },
    Net(ConnectionSummary),
    Pool(u64),
    Warn(JobWarning),
    Latency { sink_node: usize, source_subtask: u32, histogram: Vec<u8>, sink: String },
    Out { key: String, value: String },
    Done,
    Failed(String),
}

/// One child's part of the result, as reported.
#[derive(Debug, Default, Clone)]
struct Report {
    operators: Vec<(usize, String, u64, u64)>,
    network: Vec<ConnectionSummary>,
    pool_peak_in_use: u64,
    warnings: Vec<JobWarning>,
    latency: Vec<(usize, u32, String, Vec<u8>)>,
    outputs: Outputs,
}

impl Report {
    /// Records a result message; false if `message` is not part of a report.
    fn add(&mut self, message: &Message) -> bool {
        match message.clone() {
            Message::Op { node, records_in, records_out, name } => {
                self.operators.push((node, name, records_in, records_out))
            }
            Message::Net(c) => self.network.push(c),
            Message::Pool(peak) => self.pool_peak_in_use = peak,
            Message::Warn(w) => self.warnings.push(w),
            Message::Latency { sink_node, source_subtask, histogram, sink } => {
                self.latency.push((sink_node, source_subtask, sink, histogram))
            }
            Message::Out { key, value } => self.outputs.push((key, value)),
            Message::Hello { .. } | Message::Peers(_) | Message::Done | Message::Failed(_) => return false,
        }
        true
    }

    /// Adds the operator counts, warnings and latency histograms into `result`.
    fn add_to(&self, result: &mut JobResult) {
        for (node, name, records_in, records_out) in &self.operators {
            match result.operators.iter_mut().find(|o| o.node == *node) {
                Some(o) => {
                    o.records_in += records_in;
                    o.records_out += records_out;
                }
                None => result.operators.push(corestream::OperatorSummary {
                    node: *node,
                    name: name.clone(),
                    parallelism: 0,
                    records_in: *records_in,
                    records_out: *records_out,
                    late_records_dropped: 0,
                    per_subtask: Vec::new(),
                }),
            }
        }
        result.warnings.extend(self.warnings.iter().cloned());
        for (sink_node, source_subtask, sink, bytes) in &self.latency {
            let histogram = match Deserializer::new().deserialize::<u64, _>(&mut bytes.as_slice()) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(sink, "a latency histogram from another TaskManager is unreadable: {e:?}");
                    continue;
                }
            };
            let at =
                result.latency.iter().position(|l| l.sink_node == *sink_node && l.source_subtask == *source_subtask);
            match at {
                Some(i) => {
                    let mut merged = result.latency[i].histogram.clone();
                    if let Err(e) = merged.add(&histogram) {
                        tracing::warn!(sink, "latency histograms not merged: {e:?}");
                    }
                    result.latency[i] = LatencySummary::new(sink.clone(), *sink_node, *source_subtask, merged);
                }
                None => result.latency.push(LatencySummary::new(sink.clone(), *sink_node, *source_subtask, histogram)),
            }
        }
    }
}

fn escape(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for c in token.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' ' => out.push_str("\\s"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(token: &str) -> Result<String, String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('\\') => '\\',
            Some('s') => ' ',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('n') => '\n',
            Some(other) => return Err(format!("unknown escape '\\{other}'")),
            None => return Err("a token ends in '\\'".into()),
        });
    }
    Ok(out)
}

/// A control line of `tokens`, each escaped.
fn encode(tokens: &[&str]) -> String {
    tokens.iter().map(|t| escape(t)).collect::<Vec<_>>().join(" ")
}

fn decode(line: &str) -> anyhow::Result<Message> {
    let tokens = line.split(' ').map(unescape).collect::<Result<Vec<_>, _>>().map_err(|e| anyhow!(e))?;
    let (kind, args) = tokens.split_first().expect("split yields at least one token");
    let want = |n: usize| -> anyhow::Result<()> {
        if args.len() != n {
            bail!("{kind} takes {n} field(s), got {}", args.len());
        }
        Ok(())
    };
    let num = |i: usize, what: &str| -> anyhow::Result<u64> {
        args[i].parse().map_err(|_| anyhow!("{kind}: {what} '{}' is not a number", args[i]))
    };
    let addr =
        |s: &str| -> anyhow::Result<SocketAddr> { s.parse().map_err(|_| anyhow!("{kind}: '{s}' is not an address")) };
    Ok(match kind.as_str() {
        "HELLO" => {
            want(3)?;
            Message::Hello { tm: num(0, "index")? as u32, pid: num(1, "pid")? as u32, data: addr(&args[2])? }
        }
        "PEERS" => {
            if args.is_empty() {
                bail!("PEERS lists no address");
            }
            Message::Peers(args.iter().map(|a| addr(a)).collect::<Result<_, _>>()?)
        }
        "OP" => {
            want(4)?;
            Message::Op {
                node: num(0, "node")? as usize,
                records_in: num(1, "records in")?,
                records_out: num(2, "records out")?,
                name: args[3].clone(),
            }
        }
        "NET" => {
            want(9)?;
            Message::Net(ConnectionSummary {
                peer: args[8].clone(),
                stats: SessionStats {
                    frames_in: num(0, "frames in")?,
                    frames_out: num(1, "frames out")?,
                    buffers_in: num(2, "buffers in")?,
                    buffers_out: num(3, "buffers out")?,
                    bytes_in: num(4, "bytes in")?,
                    bytes_out: num(5, "bytes out")?,
                    credit_announcements: num(6, "credit announcements")?,
                },
                remote_credit_stalls: num(7, "remote credit stalls")?,
            })
        }
        "POOL" => {
            want(1)?;
            Message::Pool(num(0, "peak")?)
        }
        "WARN" => {
            want(4)?;
            Message::Warn(JobWarning {
                subtask: num(0, "subtask")? as u32,
                count: num(1, "count")?,
                operator: args[2].clone(),
                message: args[3].clone(),
            })
        }
        "LATENCY" => {
            want(4)?;
            let histogram = from_hex(&args[2]).map_err(|e| anyhow!("LATENCY: the histogram {e}"))?;
            Message::Latency {
                sink_node: num(0, "sink node")? as usize,
                source_subtask: num(1, "source subtask")? as u32,
                histogram,
                sink: args[3].clone(),
            }
        }
        "OUT" => {
            want(2)?;
            Message::Out { key: args[0].clone(), value: args[1].clone() }
        }
        "DONE" => {
            want(0)?;
            Message::Done
        }
        "FAILED" => {
            want(1)?;
            Message::Failed(args[0].clone())
        }
        other => bail!("unknown message '{other}'"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_manager_the_others_timed_out_on_is_the_one_that_hung() {
        let timeout = "connection to TaskManager 3 (127.0.0.1:38827) timed out: nothing received for 2s";
        let messages = vec![
            format!("{timeout}: {timeout}"),
            format!("the job failed on TaskManager 0 (127.0.0.1:41693): {timeout}"),
        ];
        let hung = hung_peer(&messages, |tm| tm == 3).unwrap();
        assert_eq!(hung, Hung { tm: 3, timeout: timeout.to_string() });
        // An echo alone still names the right one.
        assert_eq!(hung_peer(&messages[1..], |tm| tm == 3).unwrap().tm, 3);
        // A peer that reported a result did not hang.
        assert_eq!(hung_peer(&messages, |_| false), None);
        let lost = vec!["connection to TaskManager 2 (127.0.0.1:1) lost: reset".to_string()];
        assert_eq!(hung_peer(&lost, |_| true), None);
    }

    #[test]
    fn tokens_round_trip_through_escaping() {
        for token in ["", "plain", "two words", "tab\tnew\nline\r", "back\\slash \\s", "ünïcode"] {
            let line = encode(&["FAILED", token]);
            assert!(!line.contains('\n'));
            assert_eq!(decode(&line).unwrap(), Message::Failed(token.to_string()));
        }
        assert!(unescape("a\\x").unwrap_err().contains("unknown escape"));
        assert!(unescape("a\\").is_err());
    }

    #[test]
    fn every_message_decodes() {
        let addr: SocketAddr = "127.0.0.1:4100".parse().unwrap();
        assert_eq!(decode("HELLO 1 77 127.0.0.1:4100").unwrap(), Message::Hello { tm: 1, pid: 77, data: addr });
        assert_eq!(decode("PEERS 127.0.0.1:4100 127.0.0.1:4100").unwrap(), Message::Peers(vec![addr, addr]));
        let op = decode(&encode(&["OP", "3", "10", "9", "Keyed Reduce: Sum"])).unwrap();
        assert_eq!(op, Message::Op { node: 3, records_in: 10, records_out: 9, name: "Keyed Reduce: Sum".into() });
        let net = decode(&encode(&["NET", "1", "2", "3", "4", "5", "6", "7", "8", "TaskManager 0 (127.0.0.1:4100)"]));
        let Message::Net(c) = net.unwrap() else { panic!("not NET") };
        assert_eq!((c.stats.frames_in, c.stats.bytes_out, c.remote_credit_stalls), (1, 6, 8));
        assert_eq!(peer_index(&c.peer), Some(0));
        assert_eq!(decode("OUT keys 1000").unwrap(), Message::Out { key: "keys".into(), value: "1000".into() });
        assert_eq!(decode("DONE").unwrap(), Message::Done);
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let err = |line: &str| decode(line).unwrap_err().to_string();
        assert!(err("HELLO 1 2").contains("HELLO takes 3"));
        assert!(err("HELLO x 2 127.0.0.1:1").contains("'x' is not a number"));
        assert!(err("HELLO 1 2 nowhere").contains("not an address"));
        assert!(err("PEERS").contains("no address"));
        assert!(err("GOSSIP 1").contains("unknown message 'GOSSIP'"));
        assert!(err("LATENCY 1 0 abc sink").contains("odd number"));
        assert!(err("DONE now").contains("DONE takes 0"));
    }

    #[test]
    fn roles_and_slots() {
        assert_eq!(parse_role("1/2", 2), Ok(1));
        assert!(parse_role("0/2", 2).is_err());
        assert!(parse_role("2/2", 2).is_err());
        assert!(parse_role("1/3", 2).unwrap_err().contains("--processes is 2"));
        assert!(parse_role("1-2", 2).is_err());
        assert_eq!(total_slots(2, None, Some(3)).unwrap(), 3);
        assert_eq!(total_slots(2, None, None).unwrap(), 2);
        assert_eq!(total_slots(3, Some(2), None).unwrap(), 6);
        assert!(total_slots(2, Some(1), Some(3)).unwrap_err().to_string().contains("gives 2"));
    }

    #[test]
    fn reports_add_up_by_operator_node() {
        let mut report = Report::default();
        for line in ["OP 0 0 50 Source", "OP 1 50 5 Sum", "POOL 7", "OUT keys 5"] {
            assert!(report.add(&decode(line).unwrap()));
        }
        assert!(!report.add(&Message::Done));
        let mut result = JobResult {
            job_name: "j".into(),
            status: corestream::runtime::metrics::JobStatus::Finished,
            wall_time: Duration::from_secs(1),
            operators: vec![corestream::OperatorSummary {
                node: 1,
                name: "Sum".into(),
                parallelism: 2,
                records_in: 50,
                records_out: 4,
                late_records_dropped: 0,
                per_subtask: vec![],
            }],
            tasks: vec![],
            warnings: vec![],
            latency: vec![],
            network: vec![],
            pool_peak_in_use: 3,
            buffers_reserved: 0,
            plan: String::new(),
        };
        report.add_to(&mut result);
        assert_eq!(result.records_in("Sum"), 100);
        assert_eq!(result.operator("Sum").unwrap().records_out, 9);
        assert_eq!(result.operator("Source").unwrap().records_out, 50);
    }

    #[test]
    fn network_lines_pair_both_sides() {
        let conn = |peer: &str, out: u64, stalls: u64| ConnectionSummary {
            peer: peer.into(),
            stats: SessionStats { buffers_out: out, bytes_out: out * 32_000, ..Default::default() },
            remote_credit_stalls: stalls,
        };
        let merged = Merged {
            result: JobResult {
                job_name: String::new(),
                status: corestream::runtime::metrics::JobStatus::Finished,
                wall_time: Duration::ZERO,
                operators: vec![],
                tasks: vec![],
                warnings: vec![],
                latency: vec![],
                network: vec![],
                pool_peak_in_use: 0,
                buffers_reserved: 0,
                plan: String::new(),
            },
            outputs: vec![vec![("keys".into(), "3".into())], vec![("keys".into(), "4".into())]],
            network: vec![
                vec![conn("TaskManager 1 (127.0.0.1:2)", 10, 1)],
                vec![conn("TaskManager 0 (127.0.0.1:1)", 20, 2)],
            ],
            pool_peaks: vec![0, 0],
        };
        let lines = merged.network_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1], "network: pool peak in use (buffers): TaskManager 0 0, TaskManager 1 0");
        assert!(
            lines[0].starts_with("network: TaskManager 0 <-> TaskManager 1: 10 buffers / 0.3 MB out"),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("credit stalls 1 out / 2 in, peer data address 127.0.0.1:2"), "{}", lines[0]);
        assert_eq!(peer_address("TaskManager 1 ([fd00::2]:7000)"), Some("[fd00::2]:7000"));
        assert_eq!(peer_address("TaskManager 1"), None);
        assert_eq!(merged.outputs_of("keys").collect::<Vec<_>>(), ["3", "4"]);
    }
}
