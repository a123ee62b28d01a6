//! JSON-RPC 2.0 envelopes and the error codes of snapnet's control API.
//!
//! Codes are stable: -32700..-32600 are JSON-RPC's own; 1000 and up are
//! snapnet's, one per kind of mistake a client can fix.

use serde::Serialize;
use serde_json::{json, Value};

/// Largest request line the server reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// The named object (vNIC, group, FDB entry) does not exist.
pub const NOT_FOUND: i64 = 1001;
/// A name, MAC or socket path is already taken.
pub const ALREADY_EXISTS: i64 = 1002;
/// The object is still used by others (e.g. a group that runs engines).
pub const IN_USE: i64 = 1003;
/// A value is out of range or inconsistent with the configuration.
pub const INVALID_VALUE: i64 = 1004;
/// An engine or socket could not be set up (the system refused).
pub const RESOURCE: i64 = 1005;
/// The daemon is shutting down.
pub const SHUTTING_DOWN: i64 = 1006;

/// An error answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A validated request.
pub struct Request {
    /// `None` for a notification (no answer is sent).
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// Checks the envelope; on error gives the id to answer with (if any).
pub fn parse_request(v: Value) -> Result<Request, (Value, RpcError)> {
    let invalid = |id: Value, m: &str| (id, RpcError::new(INVALID_REQUEST, m));
    let Value::Object(mut map) = v else {
        return Err(invalid(Value::Null, "a request must be a JSON object"));
    };
    let id = map.remove("id");
    if let Some(id) = &id {
        if !(id.is_string() || id.is_number() || id.is_null()) {
            return Err(invalid(
                Value::Null,
                "id must be a string, a number or null",
            ));
        }
    }
    let answer_id = id.clone().unwrap_or(Value::Null);
    if map.remove("jsonrpc") != Some(Value::String("2.0".into())) {
        return Err(invalid(answer_id, "jsonrpc must be \"2.0\""));
    }
    let Some(Value::String(method)) = map.remove("method") else {
        return Err(invalid(answer_id, "method must be a string"));
    };
    let params = map
        .remove("params")
        .unwrap_or(Value::Object(Default::default()));
    if !(params.is_object() || params.is_array()) {
        return Err(invalid(answer_id, "params must be an object"));
    }
    if let Some(k) = map.keys().next() {
        return Err(invalid(answer_id, &format!("unknown member '{k}'")));
    }
    Ok(Request { id, method, params })
}

pub fn success(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

pub fn failure(id: Value, e: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e })
}
