//! vhost-user requests with a u64 payload, sent by hand: the `vhost` crate's
//! frontend has no call for SET_STATUS or NET_SET_MTU, and its SET_VRING_BASE
//! takes only the 16-bit base a split ring needs, and it has no SEND_RARP. Used by the frontend and by
//! the upgrade's replay.

use std::io;
use std::os::fd::RawFd;

use super::FrontendError;

/// VHOST_USER_SET_VRING_BASE.
pub const SET_VRING_BASE: u32 = 10;
/// VHOST_USER_SEND_RARP (the MAC in the payload's first six bytes).
pub const SEND_RARP: u32 = 19;
/// VHOST_USER_NET_SET_MTU.
pub const NET_SET_MTU: u32 = 20;
/// VHOST_USER_SET_STATUS.
pub const SET_STATUS: u32 = 39;

/// Sends request `code` with the 8-byte payload `value` on the vhost-user
/// stream `fd`, and waits for the REPLY_ACK when it is negotiated (`what`
/// names the request in errors).
pub fn send_u64(
    fd: RawFd,
    code: u32,
    value: u64,
    reply_ack: bool,
    what: &'static str,
) -> Result<(), FrontendError> {
    let flags: u32 = 1 | if reply_ack { 0x8 } else { 0 };
    let mut msg = [0u8; 20];
    msg[0..4].copy_from_slice(&code.to_le_bytes());
    msg[4..8].copy_from_slice(&flags.to_le_bytes());
    msg[8..12].copy_from_slice(&8u32.to_le_bytes());
    msg[12..20].copy_from_slice(&value.to_le_bytes());
    let mut off = 0;
    while off < msg.len() {
        // SAFETY: the pointer/length pair describes the live `msg` buffer.
        let r = unsafe {
            libc::send(
                fd,
                msg[off..].as_ptr().cast(),
                msg.len() - off,
                libc::MSG_NOSIGNAL,
            )
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FrontendError::io(what)(err));
        }
        off += r as usize;
    }
    if !reply_ack {
        return Ok(());
    }
    let mut reply = [0u8; 20];
    let mut off = 0;
    while off < reply.len() {
        // SAFETY: the pointer/length pair describes the live `reply` buffer.
        let r = unsafe { libc::recv(fd, reply[off..].as_mut_ptr().cast(), reply.len() - off, 0) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FrontendError::io(what)(err));
        }
        if r == 0 {
            return Err(FrontendError::BadReply(what));
        }
        off += r as usize;
    }
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().unwrap());
    let value = u64::from_le_bytes(reply[12..20].try_into().unwrap());
    if word(0) != code || word(4) & 0x4 == 0 || word(8) != 8 || value != 0 {
        return Err(FrontendError::BadReply(what));
    }
    Ok(())
}
