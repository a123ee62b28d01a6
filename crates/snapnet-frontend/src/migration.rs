//! What a frontend does around a live migration, in QEMU's order: share a
//! dirty-page log and ack VHOST_F_LOG_ALL (the backend then marks every
//! page it writes), turn logging off again, and ask the backend to
//! announce the guest's MAC (SEND_RARP) once the guest runs elsewhere.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost::{VhostBackend, VhostUserDirtyLogRegion};

use super::device::Frontend;
use super::raw_request::{send_u64, SEND_RARP};
use super::FrontendError;

/// Guest bytes one bit of the log stands for (the vhost log's page).
pub const LOG_PAGE: u64 = 4096;
/// VHOST_F_LOG_ALL.
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// A dirty-page log shared with the backend: bit `p` of the little-endian
/// 64-bit words stands for guest page `p`.
#[derive(Debug)]
pub struct FrontendLog {
    file: File,
    len: u64,
}

impl FrontendLog {
    /// A zeroed log covering `mem_size` bytes of guest memory.
    fn new(mem_size: u64) -> Result<Self, FrontendError> {
        let pages = mem_size.div_ceil(LOG_PAGE);
        let len = pages.div_ceil(64) * 8;
        // SAFETY: memfd_create with a valid NUL-terminated name; the result
        // is checked.
        let fd = unsafe { libc::memfd_create(c"snapnet-dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(FrontendError::io("memfd_create (dirty log)")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len)
            .map_err(FrontendError::io("ftruncate (dirty log)"))?;
        Ok(FrontendLog { file, len })
    }

    /// Every guest page marked since the log was shared or last cleared,
    /// in ascending order.
    pub fn dirty_pages(&self) -> Vec<u64> {
        let mut bytes = vec![0u8; self.len as usize];
        self.file
            .read_exact_at(&mut bytes, 0)
            .expect("reading a memfd of known length");
        let mut pages = Vec::new();
        for (w, word) in bytes.chunks_exact(8).enumerate() {
            let mut bits = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            while bits != 0 {
                pages.push(w as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        pages
    }

    /// Whether the page holding `gpa` is marked.
    pub fn is_dirty(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        let mut byte = [0u8; 1];
        self.file
            .read_exact_at(&mut byte, page / 8)
            .expect("reading a memfd of known length");
        byte[0] & (1 << (page % 8)) != 0
    }

    /// Unmarks every page (as QEMU does after each pass over the log).
    pub fn clear(&self) {
        self.file
            .write_all_at(&vec![0u8; self.len as usize], 0)
            .expect("writing a memfd of known length");
    }
}

impl Frontend {
    /// Starts a migration's dirty-page logging: a log for all guest memory
    /// (SET_LOG_BASE with the memfd, which needs LOG_SHMFD), then
    /// VHOST_F_LOG_ALL acked with the other features (SET_FEATURES).
    pub fn start_dirty_log(&mut self) -> Result<FrontendLog, FrontendError> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::LOG_SHMFD)
        {
            return Err(FrontendError::MissingFeature(
                "the LOG_SHMFD protocol feature",
            ));
        }
        if self.offered_features & VHOST_F_LOG_ALL == 0 {
            return Err(FrontendError::MissingFeature("VHOST_F_LOG_ALL"));
        }
        let log = FrontendLog::new(self.mem_size() as u64)?;
        let region = VhostUserDirtyLogRegion {
            mmap_size: log.len,
            mmap_offset: 0,
            mmap_handle: log.file.as_raw_fd(),
        };
        // SET_LOG_BASE has a reply of its own: no REPLY_ACK on top.
        self.vu.set_hdr_flags(VhostUserHeaderFlag::empty());
        let r = self.vu.set_log_base(0, Some(region));
        self.vu.set_hdr_flags(self.ack_flags());
        r.map_err(FrontendError::vhost("SET_LOG_BASE"))?;
        self.set_log_all(true)?;
        Ok(log)
    }

    /// Ends logging: VHOST_F_LOG_ALL no longer acked. The backend stops
    /// marking before the reply (with REPLY_ACK), so the log may go then.
    pub fn stop_dirty_log(&mut self) -> Result<(), FrontendError> {
        self.set_log_all(false)
    }

    /// The header flags the device's requests carry after the handshake
    /// (an ack asked for when REPLY_ACK is negotiated).
    fn ack_flags(&self) -> VhostUserHeaderFlag {
        if self
            .protocol_features
            .contains(VhostUserProtocolFeatures::REPLY_ACK)
        {
            VhostUserHeaderFlag::NEED_REPLY
        } else {
            VhostUserHeaderFlag::empty()
        }
    }

    fn set_log_all(&mut self, on: bool) -> Result<(), FrontendError> {
        let features = if on {
            self.features | VHOST_F_LOG_ALL
        } else {
            self.features & !VHOST_F_LOG_ALL
        };
        self.vu
            .set_features(features)
            .map_err(FrontendError::vhost("SET_FEATURES"))?;
        self.features = features;
        Ok(())
    }

    /// SEND_RARP: asks the backend to announce `mac` (QEMU sends it on the
    /// destination when the guest cannot announce itself).
    pub fn send_rarp(&self, mac: [u8; 6]) -> Result<(), FrontendError> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::RARP)
        {
            return Err(FrontendError::MissingFeature("the RARP protocol feature"));
        }
        let mut payload = [0u8; 8];
        payload[..6].copy_from_slice(&mac);
        // Like QEMU: no reply asked for.
        send_u64(
            self.vu.as_raw_fd(),
            SEND_RARP,
            u64::from_le_bytes(payload),
            false,
            "SEND_RARP",
        )
    }
}
