//! The client side of the control socket, for `snapnet ctl` and tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;

use super::protocol::RpcError;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon answered something that is not JSON-RPC: {0}")]
    BadAnswer(String),
    #[error("error {}: {}", .0.code, .0.message)]
    Rpc(RpcError),
}

/// One connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            next_id: 1,
        })
    }

    /// Sends a raw line and returns the raw answer line (for tests).
    pub fn raw(&mut self, line: &str) -> Result<Value, ClientError> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer)?;
        serde_json::from_str(&answer).map_err(|_| ClientError::BadAnswer(answer))
    }

    /// Calls `method` with `params`; the result, or the daemon's error.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let mut answer = self.raw(&req.to_string())?;
        if answer["id"] != json!(id) {
            return Err(ClientError::BadAnswer(answer.to_string()));
        }
        if let Some(e) = answer.get("error") {
            let code = e["code"].as_i64().unwrap_or(0);
            let message = e["message"].as_str().unwrap_or("").to_string();
            return Err(ClientError::Rpc(RpcError { code, message }));
        }
        Ok(answer["result"].take())
    }
}
