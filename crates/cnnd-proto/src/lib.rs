//! cnnd-proto: the wire types. Code generated from `proto/cnn/v1/*.proto` (package
//! `cnn.v1`), the encoded descriptor set that server reflection serves, the conversions
//! between `google.protobuf.Struct` and JSON that every side uses for hyperparameters, and
//! between the wire messages and cnnd-core's domain types ([`convert`]).

tonic::include_proto!("cnn.v1");

pub mod convert;

/// Descriptor set of every cnn.v1 proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cnn_v1_descriptor.bin"));

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// JSON object -> `google.protobuf.Struct`.
pub fn struct_from_json(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), value_from_json(v)))
            .collect(),
    }
}

pub fn value_from_json(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(value_from_json).collect(),
        }),
        Value::Object(o) => Kind::StructValue(struct_from_json(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// `google.protobuf.Struct` -> JSON object. Numbers that are whole become JSON integers, so
/// `3` stays `3` (protobuf carries every number as a double).
pub fn struct_to_json(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

pub fn value_to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_a_round_trip_through_struct() {
        let v = serde_json::json!({"kernelSize": [3, 5], "dropout": [0, 0.25], "head": ["gap"], "batchNorm": true, "x": null});
        let back = struct_to_json(&struct_from_json(v.as_object().unwrap()));
        assert_eq!(Value::Object(back), v);
    }
}
