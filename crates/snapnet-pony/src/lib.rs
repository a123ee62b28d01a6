//! Pony Express client (docs/pony.md, "Application interface"): reliable
//! messages and one-sided reads, writes and indirect reads through a snapnet
//! daemon's Pony engine, over queues in memory shared with it.
//!
//! An [`App`] attaches to the daemon's Pony socket and maps the shared
//! region: a command ring the application fills, a completion ring the
//! engine fills, the application's **arena** (buffers it sends from, reads
//! into and registers; [`App::alloc`] manages it) and the engine's
//! **receive area**, where incoming messages wait until
//! [`App::release`]d. Every call that submits a command returns at once;
//! its outcome arrives later as a [`Completion`] carrying the `user_data`
//! it was given ([`App::poll`] to spin, [`App::wait`] to block). [`App::connect`],
//! [`App::register`] and [`App::deregister`] block for their own outcome.
//!
//! ```no_run
//! use snapnet_pony::{kind, App};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut app = App::attach("/run/snapnet/pony.sock", "kv", 7)?; // service 7
//! let conn = app.connect("10.0.0.2".parse()?, 7)?; // blocks until CONNECTED
//! let buf = app.alloc(4096)?; // arena buffer
//! app.write_bytes(&buf, 0, b"hello")?;
//! app.send(conn, /* stream */ 0, &buf.slice(0, 5), /* user data */ 1)?;
//! loop {
//!     let Some(c) = app.wait(None)? else { continue };
//!     match c.kind {
//!         kind::SENT if c.user_data == 1 => break,
//!         kind::RECEIVED => {
//!             println!("got {:?}", app.message(&c)?);
//!             app.release(&c)?;
//!         }
//!         _ => {}
//!     }
//! }
//! app.free(buf)?;
//! # Ok(())
//! # }
//! ```

pub mod abi;
mod arena;
mod attach;
mod client;
mod error;
mod region;

#[cfg(test)]
mod tests;

pub use abi::{access, kind, op, status, Command, Completion, Layout};
pub use arena::{Buffer, ALIGN};
pub use client::{App, ATTACH_TIMEOUT, RESERVED_USER_DATA};
pub use error::{kind_name, status_name, Error};
