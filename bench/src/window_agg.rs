//! The text formats of `corestream run window-agg`: the `--window`, duration and `--agg`
//! arguments, the CSV input (header row, then one record per line), and the output, late and
//! rejected-row files. Everything here is pure string handling, used by the CLI at the edge of
//! the job (before the source and after the sink) and by the golden tests; the windowing itself
//! is the engine's (reference: [`crate::window_model`]).
//!
//! CSV input follows RFC 4180 within one line: fields are separated by commas, a field may be
//! enclosed in double quotes (then it may contain commas, and `""` stands for one quote), a
//! trailing `\r` is ignored, and a quoted field cannot span lines. A quote inside an unquoted
//! field is an error rather than a literal. Line numbers are 1-based file lines: the header is
//! line 1. Every data row must have as many fields as the header; blank lines are skipped.
//!
//! Files written: the output ([`OUTPUT_HEADER`], then [`format_result`] per firing), the late
//! rows ([`late_header`], then [`format_late`] per row: the key, time and value columns, so for
//! an input of exactly those columns it repeats the input's header and rows) and the rejected
//! rows ([`REJECTED_HEADER`], then [`format_rejected`]). The golden files in
//! `tools/tests/golden/window-agg/` hold the output sorted by key, start and end.

use std::borrow::Cow;
use std::fmt;
use std::num::IntErrorKind;

use crate::exact::{ExactAcc, Num};
use crate::window_model::{Agg, Event, WindowResult, WindowSpec};

pub const OUTPUT_HEADER: &str = "key,window_start,window_end,value";
pub const REJECTED_HEADER: &str = "line,reason,row";

/// A command-line argument or the input's header that cannot be used; the message names the
/// argument and what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    Duration { input: String, reason: String },
    Window { input: String, reason: String },
    Agg { input: String, reason: String },
    Trigger { input: String, reason: String },
    UnknownColumn { column: String, columns: Vec<String> },
    DuplicateColumn { column: String, count: usize },
    Header { reason: String },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Duration { input, reason } => write!(f, "duration '{input}': {reason}"),
            SpecError::Window { input, reason } => write!(f, "window spec '{input}': {reason}"),
            SpecError::Agg { input, reason } => write!(f, "aggregate '{input}': {reason}"),
            SpecError::Trigger { input, reason } => write!(f, "trigger '{input}': {reason}"),
            SpecError::UnknownColumn { column, columns } => {
                let names: Vec<String> = columns.iter().map(|c| format!("'{c}'")).collect();
                write!(f, "unknown column '{column}'; the header has {}", names.join(", "))
            }
            SpecError::DuplicateColumn { column, count } => {
                write!(f, "column '{column}' appears {count} times in the header; rename one")
            }
            SpecError::Header { reason } => write!(f, "header: {reason}"),
        }
    }
}

impl std::error::Error for SpecError {}

/// A window trigger: `event-time` (the default: fire when the watermark passes the window's
/// end), `count:N` (fire every N rows), `continuous:DUR` (fire every DUR of event time and at
/// the end), each optionally `purging:`-prefixed (clear the window whenever it fires).
pub fn parse_trigger(s: &str) -> Result<corestream::Trigger, SpecError> {
    let err = |reason: String| SpecError::Trigger { input: s.to_string(), reason };
    let t = s.trim();
    if let Some(inner) = t.strip_prefix("purging:") {
        return match parse_trigger(inner) {
            Ok(corestream::Trigger::Purging(_)) => Err(err("purging: appears twice".into())),
            Ok(inner) => Ok(inner.purging()),
            Err(e) => Err(err(e.to_string())),
        };
    }
    if t == "event-time" {
        return Ok(corestream::Trigger::EventTime);
    }
    if let Some(n) = t.strip_prefix("count:") {
        return match n.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(corestream::Trigger::Count(n)),
            _ => Err(err(format!("'{n}' is not a positive count, e.g. count:100"))),
        };
    }
    if let Some(d) = t.strip_prefix("continuous:") {
        let ms = parse_duration_ms(d).map_err(|e| err(e.to_string()))?;
        if ms <= 0 {
            return Err(err("the interval must be positive, e.g. continuous:5s".into()));
        }
        return Ok(corestream::Trigger::ContinuousEventTime(ms));
    }
    Err(err("expected event-time, count:N or continuous:DURATION, optionally prefixed by purging:".into()))
}

const DURATION_FORMS: &str =
    "use a whole number with a unit (ns, us, ms, s, m or h; whole milliseconds), e.g. 250ms, 10s, 5m, 1h";

fn duration_ms(s: &str) -> Result<i64, String> {
    if s.is_empty() {
        return Err(format!("empty; {DURATION_FORMS}"));
    }
    if s == "0" {
        return Ok(0);
    }
    if s.starts_with('-') {
        return Err("must not be negative".to_string());
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("expected a number; {DURATION_FORMS}"));
    }
    if unit.starts_with('.') {
        return Err("fractions are not supported; use a smaller unit, e.g. 1500ms".to_string());
    }
    // (milliseconds per unit, units per millisecond)
    let (factor, divisor): (i64, i64) = match unit {
        "ns" => (1, 1_000_000),
        "us" | "µs" => (1, 1_000),
        "ms" => (1, 1),
        "s" => (1_000, 1),
        "m" | "min" => (60_000, 1),
        "h" => (3_600_000, 1),
        "" => {
            return Err(format!(
                "a number needs a unit: ns, us, ms, s, m or h (e.g. {s}ms or {s}s); only a bare 0 needs none"
            ))
        }
        other => return Err(format!("unknown unit '{other}'; {DURATION_FORMS}")),
    };
    let n = digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("too large (at most {} ms)", i64::MAX))?;
    if n % divisor != 0 {
        return Err(format!("not a whole number of milliseconds; {DURATION_FORMS}"));
    }
    Ok(n / divisor)
}

/// A non-negative duration in whole milliseconds: a number with a unit (`250ms`, `10s`, `5m`,
/// `1h`, also `ns` and `us` for whole milliseconds), or a bare `0`. A number without a unit is
/// refused, as every duration option of the command-line program does.
pub fn parse_duration_ms(s: &str) -> Result<i64, SpecError> {
    duration_ms(s).map_err(|reason| SpecError::Duration { input: s.to_string(), reason })
}

/// `tumbling:SIZE[@OFFSET]`, `sliding:SIZE/SLIDE[@OFFSET]` or `session:GAP`. Lengths are
/// durations greater than 0; the slide is at most the size; as in Flink, the offset is smaller
/// than the size (tumbling) or the slide (sliding).
pub fn parse_window_spec(s: &str) -> Result<WindowSpec, SpecError> {
    let err = |reason: String| SpecError::Window { input: s.to_string(), reason };
    let Some((kind, rest)) = s.split_once(':') else {
        return Err(err("expected TYPE:SIZE, e.g. tumbling:10s, sliding:10s/2s or session:5s".to_string()));
    };
    let length = |what: &str, text: &str| -> Result<i64, SpecError> {
        let ms = duration_ms(text).map_err(|reason| err(format!("{what} '{text}': {reason}")))?;
        if ms == 0 {
            return Err(err(format!("{what} must be greater than 0")));
        }
        Ok(ms)
    };
    let (body, offset_text) = match rest.split_once('@') {
        Some((body, offset)) => (body, Some(offset)),
        None => (rest, None),
    };
    let offset = |limit_name: &str, limit_text: &str, limit: i64| -> Result<i64, SpecError> {
        let Some(text) = offset_text else { return Ok(0) };
        let ms = duration_ms(text).map_err(|reason| err(format!("offset '{text}': {reason}")))?;
        if ms >= limit {
            return Err(err(format!("offset '{text}' must be smaller than the {limit_name} '{limit_text}'")));
        }
        Ok(ms)
    };
    match kind {
        "tumbling" => {
            if body.contains('/') {
                return Err(err(
                    "expected one SIZE, e.g. tumbling:10s; use sliding:SIZE/SLIDE for sliding windows".to_string()
                ));
            }
            let size = length("size", body)?;
            Ok(WindowSpec::Tumbling { size, offset: offset("size", body, size)? })
        }
        "sliding" => {
            let Some((size_text, slide_text)) = body.split_once('/') else {
                return Err(err("expected SIZE/SLIDE, e.g. sliding:10s/2s".to_string()));
            };
            let size = length("size", size_text)?;
            let slide = length("slide", slide_text)?;
            if slide > size {
                return Err(err(format!("slide '{slide_text}' must not be larger than the size '{size_text}'")));
            }
            Ok(WindowSpec::Sliding { size, slide, offset: offset("slide", slide_text, slide)? })
        }
        "session" => {
            if offset_text.is_some() || body.contains('/') {
                return Err(err(
                    "expected one GAP, e.g. session:5s (session windows take no slide or offset)".to_string()
                ));
            }
            Ok(WindowSpec::Session { gap: length("gap", body)? })
        }
        other => Err(err(format!("unknown window type '{other}'; expected tumbling, sliding or session"))),
    }
}

/// The `--agg` argument: `count`, or `sum`, `min`, `max`, `avg` of a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggSpec {
    Count,
    Sum(String),
    Min(String),
    Max(String),
    Avg(String),
}

impl AggSpec {
    pub fn agg(&self) -> Agg {
        match self {
            AggSpec::Count => Agg::Count,
            AggSpec::Sum(_) => Agg::Sum,
            AggSpec::Min(_) => Agg::Min,
            AggSpec::Max(_) => Agg::Max,
            AggSpec::Avg(_) => Agg::Avg,
        }
    }

    /// The column the aggregate reads, if any.
    pub fn column(&self) -> Option<&str> {
        match self {
            AggSpec::Count => None,
            AggSpec::Sum(c) | AggSpec::Min(c) | AggSpec::Max(c) | AggSpec::Avg(c) => Some(c),
        }
    }
}

pub fn parse_agg(s: &str) -> Result<AggSpec, SpecError> {
    let err = |reason: String| SpecError::Agg { input: s.to_string(), reason };
    let (name, column) = match s.split_once(':') {
        Some((name, column)) => (name, Some(column)),
        None => (s, None),
    };
    let make: fn(String) -> AggSpec = match name {
        "count" => {
            return match column {
                None => Ok(AggSpec::Count),
                Some(_) => Err(err("count takes no column; use count".to_string())),
            }
        }
        "sum" => AggSpec::Sum,
        "min" => AggSpec::Min,
        "max" => AggSpec::Max,
        "avg" => AggSpec::Avg,
        other => {
            return Err(err(format!(
                "unknown aggregate '{other}'; expected count, sum:COL, min:COL, max:COL or avg:COL"
            )))
        }
    };
    match column {
        None | Some("") => Err(err(format!("{name} needs a column, e.g. {name}:amount"))),
        Some(column) => Ok(make(column.to_string())),
    }
}

/// Splits one CSV line into its fields (see the module documentation for the rules).
pub fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let number = fields.len() + 1;
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field".to_string()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected '{c}' after the closing quote of field {number}")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => {
                        return Err(format!(
                            "quote inside unquoted field {number}; quote the whole field and double the quote"
                        ))
                    }
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// `s` as one CSV field: quoted (with doubled quotes) when it contains a comma, a quote or a
/// line break, else as is.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

/// Where the columns a job reads are in each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvSchema {
    pub key: usize,
    pub time: usize,
    pub value: Option<usize>,
    /// The header's column names.
    pub columns: Vec<String>,
}

/// Finds the key, time and (optional) value columns in the header line. A leading UTF-8 byte
/// order mark is ignored.
pub fn resolve_columns(header: &str, key: &str, time: &str, value: Option<&str>) -> Result<CsvSchema, SpecError> {
    let header = header.strip_prefix('\u{feff}').unwrap_or(header);
    let columns = split_csv_line(header).map_err(|reason| SpecError::Header { reason })?;
    let find = |name: &str| -> Result<usize, SpecError> {
        let positions: Vec<usize> = columns.iter().enumerate().filter(|(_, c)| *c == name).map(|(i, _)| i).collect();
        match positions[..] {
            [i] => Ok(i),
            [] => Err(SpecError::UnknownColumn { column: name.to_string(), columns: columns.clone() }),
            _ => Err(SpecError::DuplicateColumn { column: name.to_string(), count: positions.len() }),
        }
    };
    Ok(CsvSchema { key: find(key)?, time: find(time)?, value: value.map(find).transpose()?, columns })
}

/// One input record; `value` is 0 when the aggregate reads no column.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: String,
    pub ts: i64,
    pub value: Num,
}

impl From<Row> for Event {
    fn from(row: Row) -> Event {
        Event { key: row.key, ts: row.ts, value: row.value }
    }
}

/// A data row that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
}

fn fields_phrase(n: usize) -> String {
    if n == 1 {
        "1 field".to_string()
    } else {
        format!("{n} fields")
    }
}

pub fn parse_row(line: &str, line_no: u64, schema: &CsvSchema) -> Result<Row, Rejected> {
    let reject = |reason: String| Rejected { line: line_no, reason };
    let fields = split_csv_line(line).map_err(reject)?;
    let (have, want) = (fields.len(), schema.columns.len());
    if have < want {
        return Err(reject(format!(
            "missing field '{}' (row has {}, header has {want})",
            schema.columns[have],
            fields_phrase(have)
        )));
    }
    if have > want {
        return Err(reject(format!("too many fields (row has {have} fields, header has {want})")));
    }
    let key = &fields[schema.key];
    if key.is_empty() {
        return Err(reject(format!("empty key in field '{}'", schema.columns[schema.key])));
    }
    let time_name = &schema.columns[schema.time];
    let text = &fields[schema.time];
    let ts = text.parse::<i64>().map_err(|e| {
        reject(match e.kind() {
            IntErrorKind::Empty => format!("field '{time_name}' is empty (expected epoch milliseconds)"),
            IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => {
                format!("field '{time_name}': '{text}' is out of range for epoch milliseconds")
            }
            _ => format!("field '{time_name}': '{text}' is not an integer (epoch milliseconds)"),
        })
    })?;
    let value = match schema.value {
        None => Num::Int(0),
        Some(i) => {
            let (name, text) = (&schema.columns[i], &fields[i]);
            if text.is_empty() {
                return Err(reject(format!("field '{name}' is empty (expected a number)")));
            }
            match Num::parse(text) {
                Some(v) => v,
                None if text.parse::<f64>().is_ok() => {
                    return Err(reject(format!("field '{name}': '{text}' is not a finite number")))
                }
                None => return Err(reject(format!("field '{name}': '{text}' is not a number"))),
            }
        }
    };
    Ok(Row { key: key.clone(), ts, value })
}

/// A whole input file, parsed: the schema, the good rows in file order with their line
/// numbers, and the rejected rows with their text. Blank lines are skipped.
#[derive(Debug, Clone)]
pub struct ParsedInput {
    pub schema: CsvSchema,
    pub rows: Vec<(u64, Row)>,
    pub rejected: Vec<(Rejected, String)>,
}

pub fn parse_input(text: &str, key: &str, time: &str, value: Option<&str>) -> Result<ParsedInput, SpecError> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Err(SpecError::Header { reason: "the input is empty; a header row is required".to_string() });
    };
    let schema = resolve_columns(header, key, time, value)?;
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for (line, line_no) in lines.zip(2u64..) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        match parse_row(line, line_no, &schema) {
            Ok(row) => rows.push((line_no, row)),
            Err(r) => rejected.push((r, line.to_string())),
        }
    }
    Ok(ParsedInput { schema, rows, rejected })
}

/// A value as written to the output: integers in full, floats in their shortest round-trip
/// form (see [`crate::exact`]: `2.5`, `0.3333333333333333`, `-1e-7`, `1.5e300`; `3.0` is `3`
/// and zero is `0`, never `-0`).
pub fn format_value(v: Num) -> String {
    v.to_string()
}

/// One output line, `key,window_start,window_end,value` (see [`OUTPUT_HEADER`]).
pub fn format_result(r: &WindowResult) -> String {
    format!("{},{},{},{}", csv_field(&r.key), r.start, r.end, format_value(r.value))
}

/// One line of the rejected-rows file (see [`REJECTED_HEADER`]); `row` is the input line
/// without its line break.
pub fn format_rejected(r: &Rejected, row: &str) -> String {
    format!("{},{},{}", r.line, csv_field(&r.reason), csv_field(row))
}

/// The header of the late-rows file: the key, time and (if read) value columns, named as in
/// the input. For an input of exactly those columns in that order it is the input's header.
pub fn late_header(schema: &CsvSchema) -> String {
    let mut names = vec![csv_field(&schema.columns[schema.key]), csv_field(&schema.columns[schema.time])];
    if let Some(i) = schema.value {
        names.push(csv_field(&schema.columns[i]));
    }
    names.join(",")
}

/// One line of the late-rows file, matching [`late_header`].
pub fn format_late(e: &Event, schema: &CsvSchema) -> String {
    let mut line = format!("{},{}", csv_field(&e.key), e.ts);
    if schema.value.is_some() {
        line.push(',');
        line.push_str(&format_value(e.value));
    }
    line
}

/// The engine's event-time assigner for a window spec.
pub fn event_time_assigner(spec: WindowSpec) -> corestream::WindowAssigner {
    use corestream::WindowAssigner;
    match spec {
        WindowSpec::Tumbling { size, offset } => WindowAssigner::Tumbling { size, offset, event_time: true },
        WindowSpec::Sliding { size, slide, offset } => {
            WindowAssigner::Sliding { size, slide, offset, event_time: true }
        }
        WindowSpec::Session { gap } => WindowAssigner::Session { gap, event_time: true },
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn triggers_parse_and_bad_ones_are_explained() {
        use corestream::Trigger;
        assert_eq!(parse_trigger("event-time").unwrap(), Trigger::EventTime);
        assert_eq!(parse_trigger("count:3").unwrap(), Trigger::Count(3));
        assert_eq!(parse_trigger("continuous:2s").unwrap(), Trigger::ContinuousEventTime(2000));
        assert_eq!(parse_trigger("purging:count:2").unwrap(), Trigger::Count(2).purging());
        for (bad, says) in [
            ("count:0", "positive count"),
            ("count:x", "positive count"),
            ("continuous:0", "positive"),
            ("continuous:3q", "duration"),
            ("purging:purging:count:2", "twice"),
            ("sometimes", "expected event-time"),
        ] {
            let msg = parse_trigger(bad).unwrap_err().to_string();
            assert!(msg.contains(bad) && msg.contains(says), "{bad}: {msg}");
        }
    }

    use super::*;

    fn window_err(s: &str) -> String {
        parse_window_spec(s).unwrap_err().to_string()
    }

    fn duration_err(s: &str) -> String {
        parse_duration_ms(s).unwrap_err().to_string()
    }

    fn schema() -> CsvSchema {
        resolve_columns("user,ts,price", "user", "ts", Some("price")).unwrap()
    }

    fn reason(line: &str) -> String {
        parse_row(line, 7, &schema()).unwrap_err().reason
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("1500ms"), Ok(1500));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration_ms("2000us"), Ok(2));
        assert_eq!(parse_duration_ms("3000000ns"), Ok(3));
        assert_eq!(parse_duration_ms("2min"), Ok(120_000));
    }

    #[test]
    fn duration_errors() {
        assert!(duration_err("").starts_with("duration '': empty; use a whole number"));
        assert_eq!(duration_err("-5s"), "duration '-5s': must not be negative");
        assert!(duration_err("5d")
            .starts_with("duration '5d': unknown unit 'd'; use a whole number with a unit (ns, us, ms"));
        assert!(duration_err("10 s").contains("unknown unit ' s'"));
        assert!(duration_err("s").starts_with("duration 's': expected a number"));
        assert!(duration_err("+5s").contains("expected a number"));
        assert_eq!(
            duration_err("1.5s"),
            "duration '1.5s': fractions are not supported; use a smaller unit, e.g. 1500ms"
        );
        assert_eq!(
            duration_err("9223372036854775808ms"),
            format!("duration '9223372036854775808ms': too large (at most {} ms)", i64::MAX)
        );
        assert!(duration_err("9223372036854776s").contains("too large"));
        assert_eq!(parse_duration_ms("9223372036854775807ms"), Ok(i64::MAX));
        for bare in ["10", "1500", "9223372036854775808"] {
            assert!(duration_err(bare).contains("a number needs a unit"), "{bare}: {}", duration_err(bare));
        }
        assert!(duration_err("1500us").contains("not a whole number of milliseconds"));
    }

    #[test]
    fn window_specs() {
        assert_eq!(parse_window_spec("tumbling:10s"), Ok(WindowSpec::Tumbling { size: 10_000, offset: 0 }));
        assert_eq!(parse_window_spec("tumbling:10s@2s"), Ok(WindowSpec::Tumbling { size: 10_000, offset: 2_000 }));
        assert_eq!(
            parse_window_spec("sliding:10s/2s"),
            Ok(WindowSpec::Sliding { size: 10_000, slide: 2_000, offset: 0 })
        );
        assert_eq!(
            parse_window_spec("sliding:1m/10s@500ms"),
            Ok(WindowSpec::Sliding { size: 60_000, slide: 10_000, offset: 500 })
        );
        assert_eq!(
            parse_window_spec("sliding:10s/10s"),
            Ok(WindowSpec::Sliding { size: 10_000, slide: 10_000, offset: 0 })
        );
        assert_eq!(parse_window_spec("session:5s"), Ok(WindowSpec::Session { gap: 5_000 }));
    }

    #[test]
    fn window_spec_errors() {
        assert_eq!(window_err("sliding:10s"), "window spec 'sliding:10s': expected SIZE/SLIDE, e.g. sliding:10s/2s");
        assert!(window_err("tumbling").starts_with("window spec 'tumbling': expected TYPE:SIZE"));
        assert_eq!(
            window_err("hopping:10s"),
            "window spec 'hopping:10s': unknown window type 'hopping'; expected tumbling, sliding or session"
        );
        assert_eq!(window_err("tumbling:0"), "window spec 'tumbling:0': size must be greater than 0");
        assert!(
            window_err("tumbling:10").contains("size '10': a number needs a unit"),
            "{}",
            window_err("tumbling:10")
        );
        assert!(window_err("sliding:10s/2").contains("slide '2': a number needs a unit"));
        assert!(window_err("tumbling:10s@3").contains("offset '3': a number needs a unit"));
        assert!(parse_trigger("continuous:5").unwrap_err().to_string().contains("a number needs a unit"));
        assert!(window_err("tumbling:10x").starts_with("window spec 'tumbling:10x': size '10x': unknown unit 'x'"));
        assert!(window_err("tumbling:").starts_with("window spec 'tumbling:': size '': empty"));
        assert!(window_err("tumbling:10s/2s").contains("expected one SIZE"));
        assert_eq!(
            window_err("tumbling:10s@10s"),
            "window spec 'tumbling:10s@10s': offset '10s' must be smaller than the size '10s'"
        );
        assert!(window_err("tumbling:10s@-1s").contains("offset '-1s': must not be negative"));
        assert_eq!(window_err("sliding:0s/2s"), "window spec 'sliding:0s/2s': size must be greater than 0");
        assert_eq!(window_err("sliding:10s/0"), "window spec 'sliding:10s/0': slide must be greater than 0");
        assert_eq!(
            window_err("sliding:10s/20s"),
            "window spec 'sliding:10s/20s': slide '20s' must not be larger than the size '10s'"
        );
        assert_eq!(
            window_err("sliding:10s/2s@2s"),
            "window spec 'sliding:10s/2s@2s': offset '2s' must be smaller than the slide '2s'"
        );
        assert!(window_err("sliding:10s/2q").contains("slide '2q': unknown unit 'q'"));
        assert!(window_err("session:5s@1s").contains("session windows take no slide or offset"));
        assert!(window_err("session:5s/1s").contains("expected one GAP"));
        assert_eq!(window_err("session:0ms"), "window spec 'session:0ms': gap must be greater than 0");
        assert!(window_err("session:-5s").contains("gap '-5s': must not be negative"));
    }

    #[test]
    fn aggregates() {
        assert_eq!(parse_agg("count"), Ok(AggSpec::Count));
        assert_eq!(parse_agg("sum:amount"), Ok(AggSpec::Sum("amount".into())));
        assert_eq!(parse_agg("min:a"), Ok(AggSpec::Min("a".into())));
        assert_eq!(parse_agg("max:a"), Ok(AggSpec::Max("a".into())));
        assert_eq!(parse_agg("avg:a b"), Ok(AggSpec::Avg("a b".into())));
        assert_eq!(parse_agg("avg:x").unwrap().agg(), Agg::Avg);
        assert_eq!(parse_agg("avg:x").unwrap().column(), Some("x"));
        assert_eq!(AggSpec::Count.agg(), Agg::Count);
        assert_eq!(AggSpec::Count.column(), None);
    }

    #[test]
    fn aggregate_errors() {
        let err = |s: &str| parse_agg(s).unwrap_err().to_string();
        assert_eq!(err("count:x"), "aggregate 'count:x': count takes no column; use count");
        assert_eq!(err("sum"), "aggregate 'sum': sum needs a column, e.g. sum:amount");
        assert_eq!(err("avg:"), "aggregate 'avg:': avg needs a column, e.g. avg:amount");
        assert_eq!(
            err("median:x"),
            "aggregate 'median:x': unknown aggregate 'median'; expected count, sum:COL, min:COL, max:COL or avg:COL"
        );
        assert!(err("").contains("unknown aggregate ''"));
    }

    #[test]
    fn csv_splitting() {
        assert_eq!(split_csv_line("a,b,c"), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(split_csv_line("a,b,c\r"), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(split_csv_line(""), Ok(vec!["".into()]));
        assert_eq!(split_csv_line(",,"), Ok(vec!["".into(), "".into(), "".into()]));
        assert_eq!(split_csv_line("a,\"\"\""), Err("unterminated quoted field".into()));
        assert_eq!(
            split_csv_line(r#""a,b","say ""hi""","","#),
            Ok(vec!["a,b".into(), "say \"hi\"".into(), "".into(), "".into()])
        );
        assert_eq!(split_csv_line(r#""東京",1"#), Ok(vec!["東京".into(), "1".into()]));
        assert_eq!(split_csv_line(r#""abc"#), Err("unterminated quoted field".into()));
        assert_eq!(split_csv_line(r#""ab"c,1"#), Err("unexpected 'c' after the closing quote of field 1".into()));
        assert!(split_csv_line(r#"x,ab"c"#).unwrap_err().starts_with("quote inside unquoted field 2"));
    }

    #[test]
    fn columns() {
        let s = resolve_columns("\u{feff}user,\"t,s\",price\r", "user", "t,s", None).unwrap();
        assert_eq!((s.key, s.time, s.value), (0, 1, None));
        assert_eq!(s.columns, vec!["user", "t,s", "price"]);
        let s = resolve_columns("price,ts,user", "user", "ts", Some("price")).unwrap();
        assert_eq!((s.key, s.time, s.value), (2, 1, Some(0)));
    }

    #[test]
    fn column_errors() {
        let err = |v: Option<&str>| resolve_columns("user,ts,amount", "user", "ts", v).unwrap_err().to_string();
        assert_eq!(err(Some("price")), "unknown column 'price'; the header has 'user', 'ts', 'amount'");
        assert_eq!(
            resolve_columns("user,ts", "name", "ts", None).unwrap_err().to_string(),
            "unknown column 'name'; the header has 'user', 'ts'"
        );
        assert_eq!(
            resolve_columns("ts,user,ts", "user", "ts", None).unwrap_err().to_string(),
            "column 'ts' appears 2 times in the header; rename one"
        );
        assert_eq!(
            resolve_columns("user,\"ts", "user", "ts", None).unwrap_err().to_string(),
            "header: unterminated quoted field"
        );
    }

    #[test]
    fn rows() {
        let s = schema();
        assert_eq!(
            parse_row("alice,1000,2.5", 2, &s),
            Ok(Row { key: "alice".into(), ts: 1000, value: Num::Float(2.5) })
        );
        assert_eq!(
            parse_row("\"a,b\",-5,-1e3\r", 2, &s),
            Ok(Row { key: "a,b".into(), ts: -5, value: Num::Float(-1000.0) })
        );
        let count = resolve_columns("user,ts,price", "user", "ts", None).unwrap();
        assert_eq!(parse_row("bob,3,whatever", 2, &count), Ok(Row { key: "bob".into(), ts: 3, value: Num::Int(0) }));
    }

    #[test]
    fn row_errors() {
        assert_eq!(
            parse_row("a,1", 7, &schema()),
            Err(Rejected { line: 7, reason: "missing field 'price' (row has 2 fields, header has 3)".into() })
        );
        assert_eq!(reason("a"), "missing field 'ts' (row has 1 field, header has 3)");
        assert_eq!(reason("a,1,2,3"), "too many fields (row has 4 fields, header has 3)");
        assert_eq!(reason(",1,2"), "empty key in field 'user'");
        assert_eq!(reason("a,abc,2"), "field 'ts': 'abc' is not an integer (epoch milliseconds)");
        assert_eq!(reason("a,1.5,2"), "field 'ts': '1.5' is not an integer (epoch milliseconds)");
        assert_eq!(reason("a,,2"), "field 'ts' is empty (expected epoch milliseconds)");
        assert_eq!(
            reason("a,99999999999999999999,2"),
            "field 'ts': '99999999999999999999' is out of range for epoch milliseconds"
        );
        assert_eq!(reason("a,1,x1"), "field 'price': 'x1' is not a number");
        assert_eq!(reason("a,1,"), "field 'price' is empty (expected a number)");
        assert_eq!(reason("a,1, 2"), "field 'price': ' 2' is not a number");
        assert_eq!(reason("a,1,NaN"), "field 'price': 'NaN' is not a finite number");
        assert_eq!(reason("a,1,inf"), "field 'price': 'inf' is not a finite number");
        assert_eq!(reason("a,1,1e400"), "field 'price': '1e400' is not a finite number");
        assert_eq!(reason("\"a,1,2"), "unterminated quoted field");
        assert!(reason("a\"b,1,2").starts_with("quote inside unquoted field 1"));
    }

    #[test]
    fn whole_input() {
        let text = "user,ts,price\r\nalice,1,2\r\n\r\nbob,x,1\nca\"rol,3,4\n";
        let parsed = parse_input(text, "user", "ts", Some("price")).unwrap();
        assert_eq!(parsed.rows, vec![(2, Row { key: "alice".into(), ts: 1, value: Num::Int(2) })]);
        let rejected: Vec<String> = parsed.rejected.iter().map(|(r, row)| format_rejected(r, row)).collect();
        assert_eq!(
            rejected,
            vec![
                "4,field 'ts': 'x' is not an integer (epoch milliseconds),\"bob,x,1\"".to_string(),
                "5,quote inside unquoted field 1; quote the whole field and double the quote,\"ca\"\"rol,3,4\""
                    .to_string(),
            ]
        );
        assert_eq!(
            parse_input("", "u", "t", None).unwrap_err().to_string(),
            "header: the input is empty; a header row is required"
        );
        assert!(matches!(parse_input("a,b\n", "u", "b", None), Err(SpecError::UnknownColumn { .. })));
    }

    #[test]
    fn values() {
        let v = |s: &str| format_value(Num::parse(s).unwrap());
        assert_eq!(v("3"), "3");
        assert_eq!(v("-3"), "-3");
        assert_eq!(v("0"), "0");
        assert_eq!(v("-0.0"), "0");
        assert_eq!(v("-1e-9"), "-1e-9");
        assert_eq!(v("2.5"), "2.5");
        assert_eq!(format_value(Num::Float(1.0 / 3.0)), "0.3333333333333333");
        assert_eq!(v("1234.5678901"), "1234.5678901");
        assert_eq!(v("2.9999999"), "2.9999999");
        assert_eq!(v("1e15"), "1000000000000000");
        assert_eq!(v("123456789.123456789"), "123456789.12345679");
        assert_eq!(v("1.5e300"), "1.5e300");
        assert_eq!(v("9223372036854775807"), "9223372036854775807");
    }

    #[test]
    fn output_lines() {
        let r = WindowResult { key: "alice".into(), start: -10_000, end: 0, value: Num::Float(2.5) };
        assert_eq!(format_result(&r), "alice,-10000,0,2.5");
        let r = WindowResult { key: "say \"hi\", bob".into(), start: 0, end: 10, value: Num::Int(4) };
        assert_eq!(format_result(&r), "\"say \"\"hi\"\", bob\",0,10,4");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        let bad = Rejected { line: 3, reason: "missing field 'price' (row has 2 fields, header has 3)".into() };
        assert_eq!(
            format_rejected(&bad, "a,1"),
            "3,\"missing field 'price' (row has 2 fields, header has 3)\",\"a,1\""
        );
        let s = schema();
        assert_eq!(late_header(&s), "user,ts,price");
        assert_eq!(format_late(&Event { key: "a,b".into(), ts: 5, value: Num::Float(1.5) }, &s), "\"a,b\",5,1.5");
        let count = resolve_columns("ts,user,price", "user", "ts", None).unwrap();
        assert_eq!(late_header(&count), "user,ts");
        assert_eq!(format_late(&Event { key: "a".into(), ts: 5, value: Num::Int(0) }, &count), "a,5");
    }
}

/// A parsed row as the `window-agg` job carries it: (line number, key, event time, value).
pub type Rec = (u64, String, i64, Num);

/// The aggregate over the rows' values, exact by the rules of [`crate::exact`].
#[derive(Clone)]
pub struct ValueAgg(pub Agg);

impl corestream::AggregateFunction<Rec, ExactAcc, Num> for ValueAgg {
    fn create_accumulator(&self) -> ExactAcc {
        ExactAcc::default()
    }
    fn add(&self, r: &Rec, acc: &mut ExactAcc) {
        acc.add(r.3);
    }
    fn get_result(&self, acc: &ExactAcc) -> Num {
        match self.0 {
            Agg::Count => Num::Int(i128::from(acc.count)),
            Agg::Sum => acc.sum(),
            Agg::Min => acc.min.unwrap_or(Num::Int(0)),
            Agg::Max => acc.max.unwrap_or(Num::Int(0)),
            Agg::Avg => acc.avg(),
        }
    }
    fn merge(&self, a: &mut ExactAcc, b: ExactAcc) {
        a.merge(&b);
    }
}
