//! Sweep files: a JSON or TOML document with the shape of `SubmitSweepRequest` in proto3 JSON
//! (camelCase names; the proto field names such as `num_trials` are accepted too, as proto3
//! JSON parsers do) turned into the request. Only the top level is checked here; what the
//! values mean is the daemon's business (it answers `INVALID_ARGUMENT` naming the field).

use std::path::Path;

use cnnd_proto::{struct_from_json, SubmitSweepRequest};
use serde_json::{Map, Value};

/// The syntax of a sweep file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Toml,
}

impl Format {
    /// `.toml` files are TOML, everything else (stdin included) is JSON.
    pub fn from_path(path: &str) -> Format {
        let is_toml = Path::new(path)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        if is_toml {
            Format::Toml
        } else {
            Format::Json
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Toml => "TOML",
        }
    }
}

/// Top-level fields: the proto3 JSON name and the proto field name.
const FIELDS: &[(&str, &str)] = &[
    ("name", "name"),
    ("dataset", "dataset"),
    ("space", "space"),
    ("fixed", "fixed"),
    ("strategy", "strategy"),
    ("numTrials", "num_trials"),
    ("maxParallel", "max_parallel"),
    ("seed", "seed"),
    ("priority", "priority"),
    ("earlyStopping", "early_stopping"),
    ("objective", "objective"),
    ("repeats", "repeats"),
    ("warmupEpochs", "warmup_epochs"),
    ("minTrials", "min_trials"),
    ("gracePeriod", "grace_period"),
    ("reductionFactor", "reduction_factor"),
    ("startupTrials", "startup_trials"),
    ("ashaMode", "asha_mode"),
    ("device", "device"),
];

/// Parses a sweep file into the request. The error is one line without the file name.
pub fn parse_sweep(text: &str, format: Format) -> Result<SubmitSweepRequest, String> {
    let doc = parse_document(text, format)?;
    request_from_map(&doc)
}

/// Parses the document into a JSON object, whatever its syntax.
pub fn parse_document(text: &str, format: Format) -> Result<Map<String, Value>, String> {
    match format {
        Format::Json => {
            let value: Value = serde_json::from_str(text).map_err(|e| json_error(&e))?;
            match value {
                Value::Object(map) => Ok(map),
                other => Err(format!(
                    "expected a JSON object at the top level, found {}",
                    kind_of(&other)
                )),
            }
        }
        Format::Toml => {
            let table: toml::Table = text.parse().map_err(|e| toml_error(text, &e))?;
            Ok(table
                .into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect())
        }
    }
}

fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    if e.line() == 0 {
        format!("invalid {}: {}", Format::Json.name(), one_line(message))
    } else {
        format!(
            "invalid {} at line {}, column {}: {}",
            Format::Json.name(),
            e.line(),
            e.column(),
            one_line(message)
        )
    }
}

fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = one_line(e.message());
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!(
                "invalid {} at line {line}, column {column}: {message}",
                Format::Toml.name()
            )
        }
        None => format!("invalid {}: {message}", Format::Toml.name()),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A parser message on one line: its lines joined with "; ", inner whitespace collapsed.
fn one_line(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Builds the request from the document's top-level object.
pub fn request_from_map(doc: &Map<String, Value>) -> Result<SubmitSweepRequest, String> {
    // Normalise the keys to their proto3 JSON names; refuse unknown and repeated ones.
    let mut fields: Map<String, Value> = Map::new();
    for (key, value) in doc {
        let Some((json_name, _)) = FIELDS.iter().find(|(j, p)| key == j || key == p) else {
            let known: Vec<&str> = FIELDS.iter().map(|(j, _)| *j).collect();
            return Err(format!(
                "unknown field '{key}' (known: {})",
                known.join(", ")
            ));
        };
        if fields
            .insert(json_name.to_string(), value.clone())
            .is_some()
        {
            return Err(format!("field '{json_name}' is given twice"));
        }
    }
    let get = |name: &str| fields.get(name).filter(|v| !v.is_null());

    let mut req = SubmitSweepRequest {
        name: string_field("name", get("name"))?,
        dataset: string_field("dataset", get("dataset"))?,
        space: struct_field("space", get("space"))?,
        fixed: struct_field("fixed", get("fixed"))?,
        strategy: string_field("strategy", get("strategy"))?,
        early_stopping: string_field("earlyStopping", get("earlyStopping"))?,
        objective: string_field("objective", get("objective"))?,
        device: string_field("device", get("device"))?,
        asha_mode: string_field("ashaMode", get("ashaMode"))?,
        ..Default::default()
    };
    req.num_trials = int_field("numTrials", get("numTrials"), 0, u32::MAX as i128)? as u32;
    req.max_parallel = int_field("maxParallel", get("maxParallel"), 0, u32::MAX as i128)? as u32;
    req.seed = int_field("seed", get("seed"), 0, u64::MAX as i128)? as u64;
    req.priority = int_field(
        "priority",
        get("priority"),
        i32::MIN as i128,
        i32::MAX as i128,
    )? as i32;
    req.repeats = int_field("repeats", get("repeats"), 0, u32::MAX as i128)? as u32;
    req.warmup_epochs = int_field("warmupEpochs", get("warmupEpochs"), 0, u32::MAX as i128)? as u32;
    req.min_trials = int_field("minTrials", get("minTrials"), 0, u32::MAX as i128)? as u32;
    req.grace_period = int_field("gracePeriod", get("gracePeriod"), 0, u32::MAX as i128)? as u32;
    req.reduction_factor = int_field(
        "reductionFactor",
        get("reductionFactor"),
        0,
        u32::MAX as i128,
    )? as u32;
    req.startup_trials =
        int_field("startupTrials", get("startupTrials"), 0, u32::MAX as i128)? as u32;
    Ok(req)
}

fn string_field(name: &str, v: Option<&Value>) -> Result<String, String> {
    match v {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field '{name}' must be a string, found {}",
            kind_of(other)
        )),
    }
}

fn struct_field(name: &str, v: Option<&Value>) -> Result<Option<prost_types::Struct>, String> {
    match v {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(struct_from_json(map))),
        Some(other) => Err(format!(
            "field '{name}' must be an object (hyperparameter name -> value), found {}",
            kind_of(other)
        )),
    }
}

/// An integer field: a JSON number without fraction or, as proto3 JSON allows, a string
/// holding one.
fn int_field(name: &str, v: Option<&Value>, min: i128, max: i128) -> Result<i128, String> {
    let Some(v) = v else { return Ok(0) };
    let parsed: Option<i128> = match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1.0e19)
                    .map(|f| f as i128)
            }),
        Value::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    };
    match parsed {
        Some(i) if (min..=max).contains(&i) => Ok(i),
        Some(i) => Err(format!(
            "field '{name}' is out of range: {i} (allowed {min}..={max})"
        )),
        None => Err(format!(
            "field '{name}' must be an integer, found {}",
            match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => format!("\"{s}\""),
                other => kind_of(other).to_string(),
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnd_proto::struct_to_json;
    use serde_json::json;

    const DESIGN_JSON: &str = r#"{"name": "mnist-heads", "dataset": "mnist",
       "space": {"kernelSize": [3, 5], "dropout": [0, 0.25, 0.5], "head": ["gap", "dense"]},
       "fixed": {"epochs": 3, "batchSize": 64, "learningRate": 0.001},
       "strategy": "grid", "maxParallel": 2, "seed": 7}"#;

    const DESIGN_TOML: &str = r#"
name = "mnist-heads"
dataset = "mnist"
strategy = "grid"
maxParallel = 2
seed = 7

[space]
kernelSize = [3, 5]
dropout = [0, 0.25, 0.5]
head = ["gap", "dense"]

[fixed]
epochs = 3
batchSize = 64
learningRate = 0.001
"#;

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::from_path("sweep.toml"), Format::Toml);
        assert_eq!(Format::from_path("dir/Sweep.TOML"), Format::Toml);
        assert_eq!(Format::from_path("sweep.json"), Format::Json);
        assert_eq!(Format::from_path("sweep"), Format::Json);
        assert_eq!(Format::from_path("-"), Format::Json);
    }

    #[test]
    fn design_example_parses_from_json() {
        let req = parse_sweep(DESIGN_JSON, Format::Json).unwrap();
        assert_eq!(req.name, "mnist-heads");
        assert_eq!(req.dataset, "mnist");
        assert_eq!(req.strategy, "grid");
        assert_eq!(req.max_parallel, 2);
        assert_eq!(req.seed, 7);
        assert_eq!(req.num_trials, 0);
        let space = struct_to_json(req.space.as_ref().unwrap());
        assert_eq!(space["kernelSize"], json!([3, 5]));
        assert_eq!(space["head"], json!(["gap", "dense"]));
        let fixed = struct_to_json(req.fixed.as_ref().unwrap());
        assert_eq!(fixed["learningRate"], json!(0.001));
    }

    #[test]
    fn toml_and_json_give_the_same_request() {
        let a = parse_sweep(DESIGN_JSON, Format::Json).unwrap();
        let b = parse_sweep(DESIGN_TOML, Format::Toml).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn proto_field_names_and_string_integers_are_accepted() {
        let req = parse_sweep(
            r#"{"dataset": "mnist", "num_trials": 4, "max_parallel": "3", "seed": "18446744073709551615", "priority": -2, "early_stopping": "none"}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(req.num_trials, 4);
        assert_eq!(req.max_parallel, 3);
        assert_eq!(req.seed, u64::MAX);
        assert_eq!(req.priority, -2);
        assert_eq!(req.early_stopping, "none");
        assert!(req.space.is_none());
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let err = parse_sweep(r#"{"dataset": "mnist", "epochs": 3}"#, Format::Json).unwrap_err();
        assert!(err.starts_with("unknown field 'epochs'"), "{err}");
        assert!(err.contains("numTrials"), "{err}");
        assert!(!err.contains('\n'));
        let err = parse_sweep("dataset = \"mnist\"\nkernel = 3\n", Format::Toml).unwrap_err();
        assert!(err.starts_with("unknown field 'kernel'"), "{err}");
    }

    #[test]
    fn repeated_key_is_refused() {
        let err = parse_sweep(r#"{"numTrials": 2, "num_trials": 3}"#, Format::Json).unwrap_err();
        assert_eq!(err, "field 'numTrials' is given twice");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = parse_sweep(r#"{"numTrials": "many"}"#, Format::Json).unwrap_err();
        assert_eq!(err, "field 'numTrials' must be an integer, found \"many\"");
        let err = parse_sweep(r#"{"maxParallel": 1.5}"#, Format::Json).unwrap_err();
        assert_eq!(err, "field 'maxParallel' must be an integer, found 1.5");
        let err = parse_sweep(r#"{"repeats": -1}"#, Format::Json).unwrap_err();
        assert!(
            err.starts_with("field 'repeats' is out of range: -1"),
            "{err}"
        );
        let err = parse_sweep(r#"{"space": [3, 5]}"#, Format::Json).unwrap_err();
        assert!(err.starts_with("field 'space' must be an object"), "{err}");
        let err = parse_sweep(r#"{"dataset": 3}"#, Format::Json).unwrap_err();
        assert_eq!(err, "field 'dataset' must be a string, found a number");
    }

    #[test]
    fn nulls_mean_defaults() {
        let req = parse_sweep(
            r#"{"name": null, "seed": null, "space": null}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(req, SubmitSweepRequest::default());
    }

    #[test]
    fn json_syntax_error_names_format_and_line() {
        let err = parse_sweep(
            "{\n  \"name\": \"x\",\n  \"dataset\" \"mnist\"\n}",
            Format::Json,
        )
        .unwrap_err();
        assert!(err.starts_with("invalid JSON at line 3, column "), "{err}");
        assert!(err.contains("expected `:`"), "{err}");
        let err = parse_sweep("", Format::Json).unwrap_err();
        assert!(err.starts_with("invalid JSON"), "{err}");
        let err = parse_sweep("[1, 2]", Format::Json).unwrap_err();
        assert_eq!(err, "expected a JSON object at the top level, found a list");
    }

    #[test]
    fn toml_syntax_error_names_format_and_line() {
        let err = parse_sweep("name = \"x\"\ndataset = \n", Format::Toml).unwrap_err();
        assert!(
            err.starts_with("invalid TOML at line 2, column 11: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(
            one_line("invalid string\n  expected `\"`\n"),
            "invalid string; expected `\"`"
        );
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
