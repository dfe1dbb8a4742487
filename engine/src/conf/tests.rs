use std::path::Path;
use std::time::Duration;

use super::*;
use crate::auth::ClusterSecret;

const NO_ENV: [(&str, &str); 0] = [];
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn from_toml(text: &str) -> Result<ClusterSettings, ConfError> {
    let mut s = ClusterSettings::default();
    s.apply_toml_str(text, Some(Path::new("/etc/corestream.toml")))?;
    Ok(s)
}

fn error(text: &str) -> String {
    from_toml(text).unwrap_err().to_string()
}

#[test]
fn defaults_are_the_documented_ones() {
    let s = ClusterSettings::default();
    assert_eq!(s.jobmanager.rpc_address, "127.0.0.1");
    assert_eq!(s.jobmanager.rpc_port, 6123);
    assert_eq!(s.jobmanager.bind_host(), "127.0.0.1");
    assert_eq!(s.jobmanager.slot_request_timeout, Duration::from_secs(300));
    assert_eq!(s.rest_address(), "127.0.0.1");
    assert_eq!((s.rest.port, s.rest.bind_address.as_str(), s.rest.max_content_length), (8081, "127.0.0.1", 1 << 20));
    assert_eq!(s.taskmanager.number_of_task_slots, None);
    assert_eq!(
        (s.taskmanager.host.as_deref(), s.taskmanager.data_port, s.taskmanager.bind_host.as_deref()),
        (None, 0, None)
    );
    assert!(s.taskmanager.slot.pin_cores);
    assert_eq!((s.heartbeat.interval, s.heartbeat.timeout), (Duration::from_secs(10), Duration::from_secs(50)));
    let n = &s.taskmanager.network;
    assert_eq!((n.number_of_buffers, n.buffers_per_channel, n.floating_buffers_per_gate), (None, 2, 8));
    assert_eq!(n.max_buffers_per_channel, 8);
    assert_eq!(s.restart.strategy, None);
    assert_eq!((s.restart.fixed_delay.attempts, s.restart.fixed_delay.delay), (1, Duration::from_secs(1)));
    let e = &s.restart.exponential_delay;
    assert_eq!((e.initial_backoff, e.max_backoff), (Duration::from_secs(1), Duration::from_secs(60)));
    assert_eq!((e.backoff_multiplier, e.jitter_factor), (1.5, 0.1));
    assert_eq!((e.reset_backoff_threshold, e.attempts_before_reset_backoff), (Duration::from_secs(3600), None));
    let f = &s.restart.failure_rate;
    assert_eq!((f.max_failures_per_interval, f.failure_rate_interval), (1, Duration::from_secs(60)));
    assert_eq!(f.delay, Duration::from_secs(1));
    assert!(s.security.auth_enabled);
    assert_eq!((&s.security.cluster_secret, &s.security.cluster_secret_file), (&None, &None));
}

#[test]
fn dotted_keys_and_tables_are_the_same() {
    let dotted = from_toml(
        "jobmanager.rpc.port = 7000\nrest.port = 8082\nheartbeat.interval = \"2 s\"\n\
         restart-strategy.type = \"fixed-delay\"\nrestart-strategy.fixed-delay.attempts = 3\n",
    )
    .unwrap();
    let tables = from_toml(
        "[jobmanager.rpc]\nport = 7000\n[rest]\nport = 8082\n[heartbeat]\ninterval = \"2s\"\n\
         [restart-strategy]\ntype = \"fixed-delay\"\nfixed-delay.attempts = 3\n",
    )
    .unwrap();
    assert_eq!(dotted, tables);
    assert_eq!((dotted.jobmanager.rpc_port, dotted.rest.port), (7000, 8082));
    assert_eq!(dotted.heartbeat.interval, Duration::from_secs(2));
    assert_eq!(dotted.restart.strategy, Some(RestartStrategyType::FixedDelay));
    assert_eq!(dotted.restart.fixed_delay.attempts, 3);
    let quoted = from_toml("\"rest.port\" = 8082\n").unwrap();
    assert_eq!(quoted.rest.port, 8082, "a quoted dotted key is Flink's flat style");
}

#[test]
fn unknown_keys_are_refused_with_a_suggestion_and_a_line() {
    let e = error("rest.port = 8081\nrest.prot = 8082\n");
    assert_eq!(e, "/etc/corestream.toml:2: unknown key `rest.prot`: did you mean `rest.port`?");
    let e = error("[rest]\n\nprot = 8082\n");
    assert_eq!(e, "/etc/corestream.toml:3: unknown key `rest.prot`: did you mean `rest.port`?");
    let e = error("taskmanager.slots = 4");
    assert!(e.ends_with("did you mean `taskmanager.numberOfTaskSlots`?"), "{e}");
    let e = error("taskmanager.numberoftaskslots = 4");
    assert!(e.ends_with("did you mean `taskmanager.numberOfTaskSlots`?"), "{e}");
    let e = error("restart-strategy = \"fixed-delay\"");
    assert!(e.ends_with("did you mean `restart-strategy.type`?"), "{e}");
    let e = error("cluster.registration.initial-timeout = \"1 s\"");
    assert!(e.ends_with("did you mean `taskmanager.registration.initial-backoff`?"), "{e}");
    let e = error("state.backend.type = \"rocksdb\"");
    assert!(e.ends_with("unknown key `state.backend.type`"), "nothing is close: {e}");
    let e = error("rest.port.number = 1");
    assert!(e.contains("unknown key `rest.port.number`: did you mean `rest.port`?"), "{e}");
}

#[test]
fn wrong_types_and_bounds_name_key_line_given_and_expected() {
    let e = error("\n\nrest.port = \"8082\"");
    assert!(e.starts_with("/etc/corestream.toml:3: invalid value for `rest.port`: got \"8082\""), "{e}");
    assert!(e.contains("expected an integer from 0 to 65535 (a number, without quotes)"), "{e}");
    let e = error("rest.port = 70000");
    assert!(e.ends_with("got 70000, expected an integer from 0 to 65535"), "{e}");
    let e = error("heartbeat.interval = 10");
    assert!(e.contains("`heartbeat.interval`: got 10, expected a duration with a unit: write e.g. \"10 s\""), "{e}");
    let e = error("heartbeat.interval = \"10 parsecs\"");
    assert!(e.contains("unknown duration unit \"parsecs\""), "{e}");
    let e = error("heartbeat.interval = \"1 ms\"");
    assert!(e.contains("expected a duration from 10 ms to 1 h"), "{e}");
    let e = error("rest.server.max-content-length = 1048576");
    assert!(e.contains("a size with a unit"), "{e}");
    let e = error("taskmanager.slot.pin-cores = \"yes\"");
    assert!(e.contains("expected true or false (without quotes)"), "{e}");
    let e = error("taskmanager.numberOfTaskSlots = 0");
    assert!(e.contains("expected an integer from 1 to 1024"), "{e}");
    let e = error("taskmanager.numberOfTaskSlots = 4.0");
    assert!(e.contains("got 4.0, expected an integer from 1 to 1024"), "{e}");
    let e = error("taskmanager.numberOfTaskSlots = 99999999999999999999999");
    assert!(e.contains("expected an integer from 1 to 1024"), "{e}");
    let e = error("jobmanager.rpc.address = [\"a\", \"b\"]");
    assert!(e.contains("got [\"a\", \"b\"], expected a host name or IP address (in quotes)"), "{e}");
    let e = error("jobmanager.rpc.address = \"jm_1\"");
    assert!(e.contains("not a valid label"), "{e}");
    let e = error("restart-strategy.type = \"sometimes\"");
    assert!(e.contains("expected one of none, fixed-delay, exponential-delay, failure-rate, off"), "{e}");
    let e = error("restart-strategy.exponential-delay.backoff-multiplier = 1");
    assert!(e.contains("expected a number greater than 1 to 1000"), "{e}");
    let e = error("restart-strategy.exponential-delay.jitter-factor = 1.5");
    assert!(e.contains("expected a number from 0 to 1"), "{e}");
    let e = error("restart-strategy.exponential-delay.jitter-factor = nan");
    assert!(e.contains("jitter-factor"), "{e}");
    let long = format!("jobmanager.rpc.address = \"{}\"", "a".repeat(300));
    assert!(error(&long).contains("…, expected"), "long values are cut");
}

#[test]
fn values_of_every_type_are_read() {
    let s = from_toml(
        r#"
        rest.server.max-content-length = "64kb"
        taskmanager.numberOfTaskSlots = 4
        taskmanager.host = "tm-1.example.org"
        taskmanager.slot.pin-cores = false
        taskmanager.slot.spin-before-park = "50us"
        restart-strategy.type = "FailureRate"
        restart-strategy.exponential-delay.backoff-multiplier = 2
        restart-strategy.exponential-delay.jitter-factor = 0.25
        restart-strategy.exponential-delay.attempts-before-reset-backoff = 10
        security.cluster.secret-file = "/run/secrets/corestream"
        "#,
    )
    .unwrap();
    assert_eq!(s.rest.max_content_length, 64 << 10);
    assert_eq!(s.taskmanager.number_of_task_slots, Some(4));
    assert_eq!(s.taskmanager.host.as_deref(), Some("tm-1.example.org"));
    assert!(!s.taskmanager.slot.pin_cores);
    assert_eq!(s.taskmanager.slot.spin_before_park, Duration::from_micros(50));
    assert_eq!(s.restart.strategy, Some(RestartStrategyType::FailureRate));
    assert_eq!(s.restart.exponential_delay.backoff_multiplier, 2.0);
    assert_eq!(s.restart.exponential_delay.jitter_factor, 0.25);
    assert_eq!(s.restart.exponential_delay.attempts_before_reset_backoff, Some(10));
    assert_eq!(s.security.cluster_secret_file.as_deref(), Some(Path::new("/run/secrets/corestream")));
}

#[test]
fn flink_aliases_of_the_strategy() {
    for (name, expected) in [
        ("off", RestartStrategyType::None),
        ("disable", RestartStrategyType::None),
        ("NONE", RestartStrategyType::None),
        ("fixeddelay", RestartStrategyType::FixedDelay),
        ("exponentialdelay", RestartStrategyType::ExponentialDelay),
        ("exponential-delay", RestartStrategyType::ExponentialDelay),
        ("failurerate", RestartStrategyType::FailureRate),
    ] {
        let mut s = ClusterSettings::default();
        s.set("restart-strategy.type", name).unwrap();
        assert_eq!(s.restart.strategy, Some(expected), "{name}");
    }
}

#[test]
fn syntax_errors_and_duplicates_have_lines() {
    let e = error("rest.port = 1\nrest.port = = 2\n");
    assert!(e.starts_with("/etc/corestream.toml:2: not valid TOML"), "{e}");
    let e = error("rest.port = 1\nrest.port = 2\n");
    assert!(e.starts_with("/etc/corestream.toml:2: not valid TOML"), "the parser refuses a duplicate: {e}");
    let e = error("\"rest.port\" = 1\n[rest]\nport = 2\n");
    assert!(e.contains("`rest.port` is given twice (first at /etc/corestream.toml:"), "{e}");
    let mut s = ClusterSettings::default();
    let e = s.apply_toml_str("x = ", None).unwrap_err().to_string();
    assert!(e.starts_with("configuration text, line 1: not valid TOML"), "{e}");
}

#[test]
fn environment_overrides_the_file_and_refuses_unknown_variables() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corestream.toml");
    std::fs::write(&file, "rest.port = 9000\ntaskmanager.numberOfTaskSlots = 2\n").unwrap();
    let env = [
        ("PATH", "/usr/bin"),
        ("CORESTREAM_CONF_REST_PORT", "8082"),
        ("CORESTREAM_CONF_TASKMANAGER_NUMBEROFTASKSLOTS", "4"),
        ("CORESTREAM_CONF_HEARTBEAT_TIMEOUT", "2 min"),
        ("CORESTREAM_CONF_SECURITY_AUTH_ENABLED", "false"),
    ];
    let s = ClusterSettings::load(Some(&file), env, &[], Role::JobManager).unwrap();
    assert_eq!((s.rest.port, s.taskmanager.number_of_task_slots), (8082, Some(4)));
    assert_eq!(s.heartbeat.timeout, Duration::from_secs(120));
    let e = ClusterSettings::load(None, [("CORESTREAM_CONF_REST_PROT", "1")], &[], Role::Client).unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment variable CORESTREAM_CONF_REST_PROT: unknown configuration variable (every CORESTREAM_CONF_* \
         variable must name a key): did you mean CORESTREAM_CONF_REST_PORT (`rest.port`)?"
    );
    let e = ClusterSettings::load(None, [("CORESTREAM_CONF_REST_PORT", "80 82")], &[], Role::Client).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "environment variable CORESTREAM_CONF_REST_PORT: invalid value for `rest.port`: got \"80 82\""
        ),
        "{e}"
    );
    let e = ClusterSettings::load(None, [("CORESTREAM_CONF_HEARTBEAT_INTERVAL", "5")], &[], Role::Client).unwrap_err();
    assert!(e.to_string().contains("a duration needs a unit"), "{e}");
}

#[test]
fn environment_values_that_are_not_utf8_are_refused() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let env = [(OsString::from("CORESTREAM_CONF_REST_ADDRESS"), OsString::from_vec(vec![0xff, 0xfe]))];
    let e = ClusterSettings::load(None, env, &[], Role::Client).unwrap_err().to_string();
    assert!(e.contains("`rest.address`: got bytes that are not UTF-8"), "{e}");
    let env = [(OsString::from_vec(b"CORESTREAM_CONF_\xff".to_vec()), OsString::from("1"))];
    assert!(matches!(ClusterSettings::load(None, env, &[], Role::Client), Err(ConfError::UnknownVariable { .. })));
    let env = [(OsString::from_vec(b"OTHER_\xff".to_vec()), OsString::from_vec(vec![0xff]))];
    assert!(ClusterSettings::load(None, env, &[], Role::Client).is_ok(), "other variables are none of our business");
}

#[test]
fn overrides_beat_the_environment() {
    let env = [("CORESTREAM_CONF_TASKMANAGER_NUMBEROFTASKSLOTS", "4")];
    let overrides = [("taskmanager.numberOfTaskSlots", "6"), ("rest.port", "0")];
    let s = ClusterSettings::load(None, env, &overrides, Role::Client).unwrap();
    assert_eq!((s.taskmanager.number_of_task_slots, s.rest.port), (Some(6), 0));
    let mut s = ClusterSettings::default();
    let e = s.set("taskmanager.slots", "4").unwrap_err().to_string();
    assert_eq!(
        e,
        "command-line override: unknown key `taskmanager.slots`: did you mean `taskmanager.numberOfTaskSlots`?"
    );
    let e = s.set("taskmanager.numberOfTaskSlots", "0").unwrap_err().to_string();
    assert!(
        e.starts_with("command-line override: invalid value for `taskmanager.numberOfTaskSlots`: got \"0\""),
        "{e}"
    );
}

#[test]
fn a_layer_with_an_invalid_value_changes_nothing() {
    let mut s = ClusterSettings::default();
    assert!(s.apply_toml_str("rest.port = 9000\nheartbeat.interval = 5\n", None).is_err());
    assert_eq!(s, ClusterSettings::default());
    assert!(s.apply_env([("CORESTREAM_CONF_REST_PORT", "9000"), ("CORESTREAM_CONF_REST_BIND_ADDRESS", "")]).is_err());
    assert_eq!(s, ClusterSettings::default());
}

#[test]
fn a_secret_is_required_by_the_cluster_processes_only() {
    for role in [Role::JobManager, Role::TaskManager] {
        let e = ClusterSettings::load(None, NO_ENV, &[], role).unwrap_err();
        assert!(matches!(e, ConfError::MissingSecret { .. }));
        let e = e.to_string();
        assert!(e.contains(&format!("the {role} needs the cluster secret")), "{e}");
        assert!(e.contains("security.cluster.secret-file = \"/path/to/secret\""), "{e}");
        assert!(e.contains("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET") && e.contains("security.auth.enabled = false"));
    }
    assert!(ClusterSettings::load(None, NO_ENV, &[], Role::Client).is_ok());
    let off = [("security.auth.enabled", "false")];
    assert!(ClusterSettings::load(None, NO_ENV, &off, Role::JobManager).is_ok());
    let env = [("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", SECRET)];
    let s = ClusterSettings::load(None, env, &[], Role::TaskManager).unwrap();
    assert_eq!(s.security.cluster_secret, Some(ClusterSecret::new(SECRET, "test").unwrap()));
}

#[test]
fn the_secret_is_never_shown() {
    let s = from_toml(&format!("security.cluster.secret = \"{SECRET}\"")).unwrap();
    assert!(!format!("{s:?}").contains(SECRET));
    assert!(!format!("{:?}", s.entries()).contains(SECRET));
    assert!(s.entries().contains(&("security.cluster.secret", "(set, not shown)".to_string())));
    let bad = "0123456789abcdef 0123456789abcdef";
    let e = error(&format!("security.cluster.secret = \"{bad}\""));
    assert!(!e.contains("0123456789abcdef") && e.contains("got a value (not shown)") && e.contains("offset 16"), "{e}");
    let e = ClusterSettings::load(None, [("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", bad)], &[], Role::Client);
    assert!(!e.unwrap_err().to_string().contains("0123456789abcdef"));
    let e = error(&format!("security.cluster.secret = [\"{SECRET}\"]"));
    assert!(!e.contains(SECRET), "{e}");
}

#[test]
fn one_layer_gives_one_secret_and_a_later_layer_replaces_it() {
    let e = error(&format!("security.cluster.secret = \"{SECRET}\"\nsecurity.cluster.secret-file = \"/s\""));
    assert!(e.contains("`security.cluster.secret` and `security.cluster.secret-file` are both set"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "security.cluster.secret-file = \"/run/secret\"\n").unwrap();
    let env = [("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", SECRET)];
    let s = ClusterSettings::load(Some(&file), env, &[], Role::JobManager).unwrap();
    assert!(s.security.cluster_secret.is_some() && s.security.cluster_secret_file.is_none());
    let s = ClusterSettings::load(Some(&file), env, &[("security.cluster.secret-file", "/other")], Role::JobManager)
        .unwrap();
    assert!(s.security.cluster_secret.is_none());
    assert_eq!(s.security.cluster_secret_file.as_deref(), Some(Path::new("/other")));
    let mut both = ClusterSettings::default();
    both.security.cluster_secret = Some(ClusterSecret::new(SECRET, "test").unwrap());
    both.security.cluster_secret_file = Some("/s".into());
    let e = both.validate(Role::Client).unwrap_err();
    assert!(matches!(e, ConfError::Inconsistent { .. }) && e.to_string().contains("both set"), "{e}");
}

#[test]
fn checks_across_keys() {
    let check = |text: &str| from_toml(text).unwrap().validate(Role::Client).map_err(|e| e.to_string());
    let e = check("heartbeat.interval = \"1 min\"").unwrap_err();
    assert!(e.contains("`heartbeat.timeout` (50 s) must be longer than `heartbeat.interval` (1 min)"), "{e}");
    let e = check("taskmanager.network.heartbeat.timeout = \"1 s\"").unwrap_err();
    assert!(e.contains("`taskmanager.network.heartbeat.timeout` (1 s) must be longer"), "{e}");
    let e = check("restart-strategy.exponential-delay.initial-backoff = \"2 min\"").unwrap_err();
    assert!(e.contains("`restart-strategy.exponential-delay.initial-backoff` (2 min) is above"), "{e}");
    let e = check("taskmanager.network.connect.initial-backoff = \"2 s\"").unwrap_err();
    assert!(e.contains("connect.initial-backoff` (2 s) is above `taskmanager.network.connect.max-backoff` (1 s)"));
    let e = check("taskmanager.registration.initial-backoff = \"1 min\"").unwrap_err();
    assert!(e.contains("registration.initial-backoff"), "{e}");
    assert!(check("heartbeat.interval = \"1 s\"\nheartbeat.timeout = \"2 s\"").is_ok());
    let tm = from_toml("jobmanager.rpc.port = 0\nsecurity.auth.enabled = false").unwrap();
    assert!(tm.validate(Role::JobManager).is_ok());
    let e = tm.validate(Role::TaskManager).unwrap_err().to_string();
    assert!(e.contains("`jobmanager.rpc.port` is 0"), "{e}");
}

#[test]
fn files_are_read_with_a_limit_and_their_errors_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let e = ClusterSettings::load(Some(&missing), NO_ENV, &[], Role::Client).unwrap_err().to_string();
    assert!(e.starts_with(&format!("cannot read the configuration file {}", missing.display())), "{e}");
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat(CONFIG_FILE_BYTES_MAX as usize + 1)).unwrap();
    let e = ClusterSettings::load(Some(&big), NO_ENV, &[], Role::Client).unwrap_err();
    assert!(matches!(e, ConfError::FileTooLarge { .. }), "{e}");
    let latin1 = dir.path().join("latin1.toml");
    std::fs::write(&latin1, b"rest.address = \"caf\xe9\"\n").unwrap();
    let e = ClusterSettings::load(Some(&latin1), NO_ENV, &[], Role::Client).unwrap_err().to_string();
    assert!(e.contains("not UTF-8"), "{e}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "\n\nrest.prot = 1\n").unwrap();
    let e = ClusterSettings::load(Some(&bad), NO_ENV, &[], Role::Client).unwrap_err().to_string();
    assert_eq!(e, format!("{}:3: unknown key `rest.prot`: did you mean `rest.port`?", bad.display()));
}

#[test]
fn entries_show_every_key() {
    let s = ClusterSettings::default();
    let entries = s.entries();
    assert_eq!(entries.len(), keys::KEYS.len());
    assert!(entries.contains(&("heartbeat.timeout", "50 s".to_string())));
    assert!(entries.contains(&("taskmanager.numberOfTaskSlots", "unset: one per physical core".to_string())));
}

#[test]
fn derived_addresses_follow_the_rpc_address() {
    let s = from_toml("jobmanager.rpc.address = \"10.0.0.5\"").unwrap();
    assert_eq!((s.rest_address(), s.jobmanager.bind_host()), ("10.0.0.5", "10.0.0.5"));
    let s = from_toml(
        "jobmanager.rpc.address = \"10.0.0.5\"\nrest.address = \"jm.example.org\"\njobmanager.bind-host = \"0.0.0.0\"",
    )
    .unwrap();
    assert_eq!((s.rest_address(), s.jobmanager.bind_host()), ("jm.example.org", "0.0.0.0"));
}

#[test]
fn local_cluster_config_of_a_taskmanager() {
    let s = from_toml(
        "taskmanager.network.memory.buffers-per-channel = 4\ntaskmanager.network.numberOfBuffers = 4096\n\
         taskmanager.slot.spin-before-park = \"20us\"\ntaskmanager.network.connect.attempts = 3\n",
    )
    .unwrap();
    let c = s.cluster_config(6);
    assert_eq!((c.slots, c.network_buffers, c.credit.exclusive_per_channel), (Some(6), Some(4096), 4));
    assert_eq!(c.spin_before_park, Some(Duration::from_micros(20)));
    assert_eq!(c.net.connect_attempts, 3);
    assert!(c.net.validate().is_ok());
    let d = ClusterSettings::default().cluster_config(0);
    assert_eq!((d.slots, d.spin_before_park), (Some(1), None));
    let local = crate::config::ClusterConfig::default();
    assert_eq!((d.credit, d.pin_slots, d.preempt_timer), (local.credit, local.pin_slots, local.preempt_timer));
    assert_eq!(d.io_memory_bytes, local.io_memory_bytes);
}

#[test]
fn a_listener_that_cannot_bind_names_the_port_and_the_key_to_change() {
    use std::io::{Error, ErrorKind};
    let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let e = listen_error(
        "the REST API",
        at("127.0.0.1:8081"),
        "rest.bind-address",
        "rest.port",
        &ErrorKind::AddrInUse.into(),
    );
    assert_eq!(
        e,
        "cannot listen for the REST API on 127.0.0.1:8081: port 8081 is already in use by another process; stop \
         that process or set another port with `rest.port`"
    );
    let e = listen_error(
        "TaskManagers",
        at("10.9.9.9:6123"),
        "jobmanager.bind-host",
        "jobmanager.rpc.port",
        &ErrorKind::AddrNotAvailable.into(),
    );
    assert!(e.contains("10.9.9.9 is not an address of this machine; set `jobmanager.bind-host`"), "{e}");
    let e = listen_error(
        "data connections",
        at("0.0.0.0:80"),
        "taskmanager.bind-host",
        "taskmanager.data.port",
        &ErrorKind::PermissionDenied.into(),
    );
    assert!(e.contains("on 0.0.0.0:80: permission denied") && e.contains("`taskmanager.data.port`"), "{e}");
    let e = listen_error(
        "data connections",
        at("0.0.0.0:7"),
        "taskmanager.bind-host",
        "taskmanager.data.port",
        &Error::other("boom"),
    );
    assert_eq!(
        e,
        "cannot listen for data connections on 0.0.0.0:7 (`taskmanager.bind-host`, `taskmanager.data.port`): boom"
    );
}
