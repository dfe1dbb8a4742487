//! Loading: a TOML file flattened into dotted keys, then `CORESTREAM_CONF_*` environment
//! variables, then overrides, each layer checked key by key against the table and applied
//! whole or not at all; finally the checks across keys and the role's requirements.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{ConfError, Origin};
use super::keys::{env_var_name, find, Flink, Given, KeySpec, KEYS};
use super::settings::ClusterSettings;
use super::{Role, ENV_PREFIX};

/// Largest configuration file read, in bytes.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// Longest rendering of a given value in an error message.
const GIVEN_CHARS_MAX: usize = 80;

/// One value of a layer, checked against its key but not yet applied.
struct Item {
    key: &'static KeySpec,
    given: Given,
    shown: String,
    origin: Origin,
}

impl ClusterSettings {
    /// Defaults, then the file (if any), then the `CORESTREAM_CONF_*` variables among `env`,
    /// then `overrides` (key, value) in order, then the checks for `role`. The environment is
    /// an argument, so this reads nothing but the file; [`Self::load_from_process`] passes
    /// the process's environment.
    pub fn load<I, K, V>(file: Option<&Path>, env: I, overrides: &[(&str, &str)], role: Role) -> Result<Self, ConfError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut settings = Self::default();
        if let Some(path) = file {
            settings.apply_toml_file(path)?;
        }
        settings.apply_env(env)?;
        for (key, value) in overrides {
            settings.set(key, value)?;
        }
        settings.validate(role)?;
        Ok(settings)
    }

    /// [`Self::load`] with the process's environment.
    pub fn load_from_process(file: Option<&Path>, overrides: &[(&str, &str)], role: Role) -> Result<Self, ConfError> {
        Self::load(file, std::env::vars_os(), overrides, role)
    }

    /// Applies a TOML file (at most [`CONFIG_FILE_BYTES_MAX`] bytes).
    pub fn apply_toml_file(&mut self, path: &Path) -> Result<(), ConfError> {
        let read_error = |source| ConfError::Read { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(CONFIG_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(read_error)?;
        if bytes.len() as u64 > CONFIG_FILE_BYTES_MAX {
            return Err(ConfError::FileTooLarge { path: path.to_path_buf(), max: CONFIG_FILE_BYTES_MAX });
        }
        let text = String::from_utf8(bytes).map_err(|e| ConfError::Syntax {
            origin: Origin::File { path: Some(path.to_path_buf()), line: None },
            message: format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
        })?;
        self.apply_toml_str(&text, Some(path))
    }

    /// Applies a TOML document; `path` names it in errors. Dotted keys and tables are the
    /// same: `[rest]` + `port = 8082` is `rest.port = 8082`.
    pub fn apply_toml_str(&mut self, text: &str, path: Option<&Path>) -> Result<(), ConfError> {
        let origin_at = |offset: Option<usize>| Origin::File {
            path: path.map(Path::to_path_buf),
            line: offset.map(|o| line_of(text, o)),
        };
        let root = DeTable::parse(text).map_err(|e| ConfError::Syntax {
            origin: origin_at(e.span().map(|s| s.start)),
            message: e.message().into(),
        })?;
        let mut leaves = Vec::new();
        flatten(root.get_ref(), "", &mut leaves);
        let mut seen: HashMap<String, Origin> = HashMap::new();
        let mut items = Vec::with_capacity(leaves.len());
        for (name, key_span, value) in leaves {
            let key_origin = origin_at(Some(key_span));
            if let Some(first) = seen.get(&name) {
                return Err(ConfError::Duplicate { origin: key_origin, key: name, first: first.clone() });
            }
            seen.insert(name.clone(), key_origin.clone());
            let Some(key) = find(&name) else {
                return Err(ConfError::UnknownKey { origin: key_origin, suggestion: suggest_key(&name), key: name });
            };
            let span = value.span();
            let source = text.get(span.clone()).unwrap_or("").trim();
            items.push(Item {
                key,
                given: given_of(value.get_ref()),
                shown: shown(key, source),
                origin: origin_at(Some(span.start)),
            });
        }
        self.apply_layer(items)
    }

    /// Applies the `CORESTREAM_CONF_<KEY>` variables among `vars` (others are ignored): the
    /// key upper-cased with `.` and `-` as `_`, e.g. `CORESTREAM_CONF_REST_PORT=8082`. A
    /// variable with the prefix that names no key is an error.
    pub fn apply_env<I, K, V>(&mut self, vars: I) -> Result<(), ConfError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let by_var: HashMap<String, &'static KeySpec> = KEYS.iter().map(|k| (env_var_name(k.name), k)).collect();
        let mut ours: Vec<(String, Result<String, ()>)> = Vec::new();
        for (name, value) in vars {
            let (name, value) = (name.as_ref(), value.as_ref());
            if !name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
                continue;
            }
            let value = value.to_str().map(str::to_string).ok_or(());
            ours.push((name.to_string_lossy().into_owned(), value));
        }
        ours.sort_by(|a, b| a.0.cmp(&b.0));
        let mut items = Vec::with_capacity(ours.len());
        for (var, value) in ours {
            let origin = Origin::Env { var: var.clone() };
            let Some(key) = by_var.get(&var).copied() else {
                let suggestion = suggest_env(&var, &by_var);
                return Err(ConfError::UnknownVariable { origin, suggestion });
            };
            let Ok(value) = value else {
                let (given, expected) = ("bytes that are not UTF-8".into(), "UTF-8 text".into());
                return Err(ConfError::InvalidValue { origin, key: key.name, given, expected });
            };
            items.push(Item { key, shown: shown(key, &format!("{value:?}")), given: Given::Text(value), origin });
        }
        self.apply_layer(items)
    }

    /// Sets one key from text, as the command line does (`--slots 4` is
    /// `set("taskmanager.numberOfTaskSlots", "4")`). Durations and sizes need their unit.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfError> {
        let Some(spec) = find(key) else {
            return Err(ConfError::UnknownKey {
                origin: Origin::Override,
                key: key.into(),
                suggestion: suggest_key(key),
            });
        };
        let item = Item {
            key: spec,
            shown: shown(spec, &format!("{value:?}")),
            given: Given::Text(value.into()),
            origin: Origin::Override,
        };
        self.apply_layer(vec![item])
    }

    /// Every key with its current value (`None`: unset, with what that means), the secret
    /// shown only as set: for logs and the REST API's view of the configuration.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        KEYS.iter()
            .map(|k| (k.name, k.kind.render(self).unwrap_or_else(|| format!("unset: {}", k.kind.unset()))))
            .collect()
    }

    /// Applies a layer to a copy and keeps it only if every value is valid. A layer that
    /// gives the secret one way replaces the other way an earlier layer gave it.
    fn apply_layer(&mut self, items: Vec<Item>) -> Result<(), ConfError> {
        let inline = items.iter().find(|i| i.key.name == "security.cluster.secret");
        let file = items.iter().find(|i| i.key.name == "security.cluster.secret-file");
        if let (Some(a), Some(b)) = (inline, file) {
            let origin = if matches!(a.origin, Origin::File { .. }) { b.origin.clone() } else { a.origin.clone() };
            return Err(ConfError::TwoSecrets { origin });
        }
        let (sets_inline, sets_file) = (inline.is_some(), file.is_some());
        let mut next = self.clone();
        for item in items {
            item.key.kind.assign(item.key.name, &mut next, &item.given).map_err(|expected| {
                ConfError::InvalidValue { origin: item.origin, key: item.key.name, given: item.shown, expected }
            })?;
        }
        if sets_inline {
            next.security.cluster_secret_file = None;
        }
        if sets_file {
            next.security.cluster_secret = None;
        }
        *self = next;
        Ok(())
    }

    /// The checks across keys, and what `role` needs (a JobManager or TaskManager with
    /// authentication on needs a secret; a TaskManager needs a port to dial).
    pub fn validate(&self, role: Role) -> Result<(), ConfError> {
        let d = super::value::format_duration;
        let longer = |long: (&'static str, std::time::Duration), short: (&'static str, std::time::Duration)| {
            if long.1 > short.1 {
                return Ok(());
            }
            let reason = format!(
                "`{}` ({}) must be longer than `{}` ({}), or a live peer is declared dead between two heartbeats",
                long.0,
                d(long.1),
                short.0,
                d(short.1)
            );
            Err(ConfError::Inconsistent { keys: vec![long.0, short.0], reason })
        };
        let not_above = |low: (&'static str, std::time::Duration), high: (&'static str, std::time::Duration)| {
            if low.1 <= high.1 {
                return Ok(());
            }
            let reason = format!("`{}` ({}) is above `{}` ({})", low.0, d(low.1), high.0, d(high.1));
            Err(ConfError::Inconsistent { keys: vec![low.0, high.0], reason })
        };
        let (tm, net, exp) = (&self.taskmanager, &self.taskmanager.network, &self.restart.exponential_delay);
        longer(("heartbeat.timeout", self.heartbeat.timeout), ("heartbeat.interval", self.heartbeat.interval))?;
        longer(
            ("taskmanager.network.heartbeat.timeout", net.heartbeat_timeout),
            ("taskmanager.network.heartbeat.interval", net.heartbeat_interval),
        )?;
        not_above(
            ("taskmanager.network.connect.initial-backoff", net.connect_initial_backoff),
            ("taskmanager.network.connect.max-backoff", net.connect_max_backoff),
        )?;
        not_above(
            ("taskmanager.registration.initial-backoff", tm.registration_initial_backoff),
            ("taskmanager.registration.max-backoff", tm.registration_max_backoff),
        )?;
        not_above(
            ("restart-strategy.exponential-delay.initial-backoff", exp.initial_backoff),
            ("restart-strategy.exponential-delay.max-backoff", exp.max_backoff),
        )?;
        let security = &self.security;
        if security.cluster_secret.is_some() && security.cluster_secret_file.is_some() {
            let reason = "`security.cluster.secret` and `security.cluster.secret-file` are both set: set one".into();
            return Err(ConfError::Inconsistent {
                keys: vec!["security.cluster.secret", "security.cluster.secret-file"],
                reason,
            });
        }
        let needs_secret = matches!(role, Role::JobManager | Role::TaskManager) && security.auth_enabled;
        if needs_secret && security.cluster_secret.is_none() && security.cluster_secret_file.is_none() {
            return Err(ConfError::MissingSecret { role });
        }
        if role == Role::TaskManager && self.jobmanager.rpc_port == 0 {
            let reason = "`jobmanager.rpc.port` is 0: a TaskManager needs the JobManager's port to dial (give \
                          `--jobmanager HOST:PORT` or set `jobmanager.rpc.port`)"
                .to_string();
            return Err(ConfError::Inconsistent { keys: vec!["jobmanager.rpc.port"], reason });
        }
        Ok(())
    }
}

/// The line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|b| **b == b'\n').count() + 1
}

/// Collects the leaves of nested tables under their dotted names, with the span of the
/// leaf's own key and its value.
fn flatten<'a, 'i>(table: &'a DeTable<'i>, prefix: &str, out: &mut Vec<(String, usize, &'a Spanned<DeValue<'i>>)>) {
    for (key, value) in table.iter() {
        let name = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        match value.get_ref() {
            DeValue::Table(inner) => flatten(inner, &name, out),
            _ => out.push((name, key.span().start, value)),
        }
    }
}

fn given_of(value: &DeValue<'_>) -> Given {
    match value {
        DeValue::String(s) => Given::Str(s.to_string()),
        DeValue::Integer(i) => Given::Int(i64::from_str_radix(i.as_str(), i.radix()).ok()),
        DeValue::Float(f) => Given::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Given::Bool(*b),
        DeValue::Datetime(_) => Given::Other("a date-time"),
        DeValue::Array(_) => Given::Other("an array"),
        DeValue::Table(_) => Given::Other("a table"),
    }
}

/// A given value as errors show it: a secret never, anything else cut to a readable length.
fn shown(key: &KeySpec, source: &str) -> String {
    if key.kind.is_secret() {
        return "a value (not shown)".into();
    }
    if source.chars().count() > GIVEN_CHARS_MAX {
        let cut: String = source.chars().take(GIVEN_CHARS_MAX).collect();
        return format!("{cut}…");
    }
    source.to_string()
}

/// The known key nearest to an unknown one: the same parent and a leaf containing the given
/// leaf (`taskmanager.slots` → `taskmanager.numberOfTaskSlots`), a key given as a table
/// (`rest.port.number` → `rest.port`), the key Flink's name of which was given, or the
/// closest by edit distance (ignoring case).
fn suggest_key(given: &str) -> Option<String> {
    let lower = given.to_lowercase();
    let (parent, leaf) = lower.rsplit_once('.').unwrap_or(("", &lower));
    let mut best: Option<(f64, &str)> = None;
    for key in KEYS {
        let name = key.name.to_lowercase();
        let mut score = strsim::normalized_damerau_levenshtein(&lower, &name);
        if let Some((p, l)) = name.rsplit_once('.') {
            if p == parent && leaf.len() >= 3 && (l.contains(leaf) || leaf.contains(l)) {
                score = score.max(0.9);
            }
        }
        if lower.starts_with(&format!("{name}.")) {
            score = score.max(0.95);
        }
        if let Flink::Named(flink) = key.flink {
            if flink.eq_ignore_ascii_case(given) {
                score = 1.0;
            }
        }
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, key.name));
        }
    }
    best.filter(|(s, _)| *s >= 0.6).map(|(_, k)| format!("`{k}`"))
}

fn suggest_env(var: &str, by_var: &HashMap<String, &'static KeySpec>) -> Option<String> {
    let upper = var.to_uppercase();
    let mut best: Option<(f64, &str, &str)> = None;
    for (name, key) in by_var {
        let score = strsim::normalized_damerau_levenshtein(&upper, name);
        if best.is_none_or(|(s, n, _)| score > s || (score == s && name.as_str() < n)) {
            best = Some((score, name, key.name));
        }
    }
    best.filter(|(s, _, _)| *s >= 0.75).map(|(_, var, key)| format!("{var} (`{key}`)"))
}
