//! A daemon with its control socket in this process, and a client that
//! checks every request it sends and every answer it gets against
//! schemas/openrpc.json.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use snapnet::control::rpc::client::{Client, ClientError};
use snapnet::control::rpc::server::RpcServer;
use snapnet::control::rpc::{Context, RpcError};
use snapnet::control::{Config, Daemon};

pub struct Control {
    pub ctx: Arc<Context>,
    pub server: Option<RpcServer>,
    pub socket: std::path::PathBuf,
}

impl Control {
    pub fn start(cfg: &Config) -> Self {
        let daemon = Daemon::start(cfg).expect("daemon starts");
        let ctx = Arc::new(Context {
            daemon: Mutex::new(Some(daemon)),
            started: Instant::now(),
            request_shutdown: Box::new(|| {}),
            upgrade: None,
            accept_paused: Default::default(),
            directory: Default::default(),
        });
        let socket = cfg.control_socket_path();
        let server = RpcServer::start(&socket, None, ctx.clone()).expect("control socket");
        Control {
            ctx,
            server: Some(server),
            socket,
        }
    }

    pub fn client(&self) -> Checked {
        Checked::connect(&self.socket)
    }

    pub fn with_daemon<R>(&self, f: impl FnOnce(&Daemon) -> R) -> R {
        f(self.ctx.daemon.lock().unwrap().as_ref().unwrap())
    }

    pub fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        if let Some(d) = self.ctx.daemon.lock().unwrap().take() {
            d.stop();
        }
    }
}

/// The OpenRPC document.
pub fn openrpc() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openrpc.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn method_doc<'a>(doc: &'a Value, method: &str) -> Option<&'a Value> {
    doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == method)
}

fn validate(doc: &Value, schema: Value, instance: &Value) -> Result<(), String> {
    let mut root = schema;
    root["components"] = doc["components"].clone();
    let v = jsonschema::validator_for(&root).map_err(|e| format!("bad schema: {e}"))?;
    let errs: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// The JSON Schema of a method's params object.
pub fn params_schema(doc: &Value, method: &str) -> Value {
    let m = method_doc(doc, method).unwrap_or_else(|| panic!("{method} not documented"));
    let mut props = serde_json::Map::new();
    let mut required = Vec::new();
    for p in m["params"].as_array().unwrap() {
        props.insert(p["name"].as_str().unwrap().into(), p["schema"].clone());
        if p["required"] == true {
            required.push(p["name"].clone());
        }
    }
    json!({ "type": "object", "properties": props, "required": required, "additionalProperties": false })
}

/// A client whose traffic is checked against the document.
pub struct Checked {
    pub client: Client,
    doc: Value,
}

impl Checked {
    pub fn connect(path: &Path) -> Self {
        Checked {
            client: Client::connect(path).unwrap(),
            doc: openrpc(),
        }
    }

    /// A call that must succeed: params and result must match the document.
    pub fn ok(&mut self, method: &str, params: Value) -> Value {
        validate(&self.doc, params_schema(&self.doc, method), &params).unwrap_or_else(|e| {
            panic!("{method} request {params} does not match openrpc.json: {e}")
        });
        let r = self
            .client
            .call(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params}: {e}"));
        self.check_result(method, &r);
        r
    }

    /// A call that must fail with `code`; the code must be one the
    /// document lists for the method.
    pub fn err(&mut self, method: &str, params: Value, code: i64) -> RpcError {
        match self.client.call(method, params.clone()) {
            Ok(r) => panic!("{method} {params} succeeded: {r}"),
            Err(ClientError::Rpc(e)) => {
                assert_eq!(e.code, code, "{method} {params}: {}", e.message);
                if let Some(m) = method_doc(&self.doc, method) {
                    let listed: Vec<i64> = m["errors"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| {
                            let name = r["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
                            self.doc["components"]["errors"][name]["code"]
                                .as_i64()
                                .unwrap()
                        })
                        .collect();
                    assert!(
                        listed.contains(&code),
                        "{method}: error {code} is not documented"
                    );
                }
                assert!(!e.message.is_empty());
                e
            }
            Err(other) => panic!("{method}: {other}"),
        }
    }

    fn check_result(&self, method: &str, r: &Value) {
        let m = method_doc(&self.doc, method).unwrap();
        validate(&self.doc, m["result"]["schema"].clone(), r)
            .unwrap_or_else(|e| panic!("{method} result {r} does not match openrpc.json: {e}"));
    }

    /// Everything the API can list, to compare before and after a refused call.
    pub fn state(&mut self) -> Value {
        json!({
            "vnics": self.ok("vnic.list", json!({})),
            "groups": self.ok("group.list", json!({})),
            "uplinks": self.ok("uplink.list", json!({})),
            "fdb": self.ok("switch.fdb.list", json!({})),
        })
    }
}
