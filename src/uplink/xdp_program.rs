//! The uplink's XDP program (source: `xdp/snapnet_uplink.bpf.c`), loaded with
//! aya and attached through a bpf_link, so the kernel detaches it when the
//! last reference goes: when snapnet exits, even by `kill -9`, nothing is left
//! on the interface for the next run to trip over.
//!
//! An upgrade hands the link and the maps over as fds
//! ([`UplinkProgram::handover_fds`], [`UplinkProgram::adopt`]): the new
//! process holds the same link, so the program never detaches and keeps its
//! id, and it updates the same maps.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, XskMap};
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};
use thiserror::Error;

use snapnet_wire::MacAddr;

/// The compiled program, rebuilt by `xdp/build.sh` (a test checks it matches
/// the source).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../xdp/snapnet_uplink.bpf.o");

const PROGRAM: &str = "snapnet_uplink";
const XSK_MAP: &str = "snapnet_xsks";
const MAC_MAP: &str = "snapnet_guest_macs";
const VTEP_MAP: &str = "snapnet_vteps";
/// What a local address's entry in the address map serves (bits; the
/// program's VTEP_VXLAN and VTEP_PONY).
const SERVES_VXLAN: u8 = 1;
const SERVES_PONY: u8 = 2;

/// How the program hooks into the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native if the driver has it, generic otherwise.
    Auto,
    /// In the driver's receive path (DRV mode).
    Native,
    /// After the kernel built an skb (SKB mode): any driver, slower.
    Generic,
}

#[derive(Debug, Error)]
pub enum XdpProgramError {
    #[error("XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("XDP map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("XDP object lacks {0}")]
    Missing(&'static str),
    #[error("XDP hand-over: {0}")]
    Handover(String),
    #[error("cannot attach XDP to {interface} in {mode:?} mode: {source}")]
    Attach {
        interface: String,
        mode: XdpMode,
        source: aya::programs::ProgramError,
    },
}

/// The program attached to one interface, with its three maps.
pub struct UplinkProgram {
    mode: XdpMode,
    xsks: Map,
    macs: Map,
    vteps: Map,
    /// The bpf_link that attaches the program: while any copy of it is
    /// open, the program stays on the interface. `None` where the kernel
    /// attached through netlink (no link to hand over).
    link: Option<OwnedFd>,
    // Last: dropping it (with `link`) detaches the program; `None` in a
    // process that adopted the program from an upgrade's old process.
    _ebpf: Option<Ebpf>,
}

/// How many fds [`UplinkProgram::handover_fds`] gives, in this order: the
/// link, then the XSK, guest-MAC and VTEP maps.
pub const HANDOVER_FDS: usize = 4;

impl UplinkProgram {
    /// Loads the program and attaches it to `ifindex` in `mode`. Returns the
    /// mode actually used (Auto resolves to Native or Generic).
    pub fn attach(interface: &str, ifindex: u32, mode: XdpMode) -> Result<Self, XdpProgramError> {
        // The program has no CO-RE relocations, so the kernel's BTF is not
        // needed: `Ebpf::load` would parse all of it (megabytes) a second time
        // on top of the loader's own parse, for every uplink added.
        let mut ebpf = EbpfLoader::new().btf(None).load(OBJECT)?;
        let xsks = ebpf
            .take_map(XSK_MAP)
            .ok_or(XdpProgramError::Missing(XSK_MAP))?;
        let vteps = ebpf
            .take_map(VTEP_MAP)
            .ok_or(XdpProgramError::Missing(VTEP_MAP))?;
        let macs = ebpf
            .take_map(MAC_MAP)
            .ok_or(XdpProgramError::Missing(MAC_MAP))?;
        // The typed views check each map's kind once, here.
        XskMap::try_from(&xsks)?;
        BpfHashMap::<_, u32, u8>::try_from(&vteps)?;
        BpfHashMap::<_, u64, u8>::try_from(&macs)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(XdpProgramError::Missing(PROGRAM))?
            .try_into()?;
        program.load()?;
        let attach = |program: &mut Xdp, m: XdpMode| {
            let flags = match m {
                XdpMode::Generic => XdpFlags::SKB_MODE,
                _ => XdpFlags::DRV_MODE,
            };
            program
                .attach_to_if_index(ifindex, flags)
                .map_err(|source| XdpProgramError::Attach {
                    interface: interface.to_string(),
                    mode: m,
                    source,
                })
        };
        let used = match mode {
            XdpMode::Auto => match attach(program, XdpMode::Native) {
                Ok(_) => XdpMode::Native,
                Err(e) => {
                    log::info!("{interface}: native XDP refused ({e}); using generic XDP");
                    attach(program, XdpMode::Generic)?;
                    XdpMode::Generic
                }
            },
            m => {
                attach(program, m)?;
                m
            }
        };
        let link = match program.info().map(|i| i.id()) {
            Ok(prog_id) => xdp_link_fd(ifindex, prog_id)
                .map_err(|e| log::warn!("{interface}: no bpf_link to hand over ({e})"))
                .ok()
                .flatten(),
            Err(e) => {
                log::warn!("{interface}: XDP program id unknown ({e})");
                None
            }
        };
        Ok(Self {
            mode: used,
            xsks,
            macs,
            vteps,
            link,
            _ebpf: Some(ebpf),
        })
    }

    /// Whether [`Self::handover_fds`] can hand the program over (it was
    /// attached through a bpf_link this process holds).
    pub fn can_hand_over(&self) -> bool {
        self.link.is_some()
    }

    /// Copies of the link and map fds for an upgrade's new process (see
    /// [`HANDOVER_FDS`] for the order).
    pub fn handover_fds(&self) -> Result<Vec<OwnedFd>, XdpProgramError> {
        let link = self.link.as_ref().ok_or_else(|| {
            XdpProgramError::Handover("the program was attached without a bpf_link".into())
        })?;
        [
            link.as_fd(),
            map_fd(&self.xsks)?,
            map_fd(&self.macs)?,
            map_fd(&self.vteps)?,
        ]
        .into_iter()
        .map(|fd| {
            fd.try_clone_to_owned()
                .map_err(|e| XdpProgramError::Handover(format!("dup: {e}")))
        })
        .collect()
    }

    /// The program an upgrade's old process attached in `mode`, from its
    /// [`Self::handover_fds`]: the same link and maps, nothing reloaded.
    pub fn adopt(mode: XdpMode, fds: Vec<OwnedFd>) -> Result<Self, XdpProgramError> {
        let [link, xsks, macs, vteps]: [OwnedFd; HANDOVER_FDS] =
            fds.try_into().map_err(|f: Vec<OwnedFd>| {
                XdpProgramError::Handover(format!("{} fds, not {HANDOVER_FDS}", f.len()))
            })?;
        let xsks = Map::XskMap(MapData::from_fd(xsks)?);
        let macs = Map::HashMap(MapData::from_fd(macs)?);
        let vteps = Map::HashMap(MapData::from_fd(vteps)?);
        XskMap::try_from(&xsks)?;
        BpfHashMap::<_, u32, u8>::try_from(&vteps)?;
        BpfHashMap::<_, u64, u8>::try_from(&macs)?;
        Ok(Self {
            mode,
            xsks,
            macs,
            vteps,
            link: Some(link),
            _ebpf: None,
        })
    }

    /// Native or Generic.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Frames for guests arriving on `queue` go to `socket`.
    pub fn set_socket(&mut self, queue: u32, socket: &impl AsRawFd) -> Result<(), XdpProgramError> {
        Ok(XskMap::try_from(&mut self.xsks)?.set(queue, socket.as_raw_fd(), 0)?)
    }

    /// Frames to `mac` are redirected to snapnet from now on.
    pub fn add_guest(&mut self, mac: MacAddr) -> Result<(), XdpProgramError> {
        Ok(BpfHashMap::<_, u64, u8>::try_from(&mut self.macs)?.insert(mac_key(mac), 1, 0)?)
    }

    /// VXLAN to `ip` (this host's underlay address) is redirected to snapnet.
    pub fn add_vtep(&mut self, ip: std::net::Ipv4Addr) -> Result<(), XdpProgramError> {
        self.serve_address(ip, SERVES_VXLAN, true)
    }

    /// Pony Express (UDP to its port) to `ip` is redirected to snapnet
    /// (`on`), or goes to the kernel again.
    pub fn set_pony_address(
        &mut self,
        ip: std::net::Ipv4Addr,
        on: bool,
    ) -> Result<(), XdpProgramError> {
        self.serve_address(ip, SERVES_PONY, on)
    }

    /// Sets or clears what the program redirects for one local address (a
    /// bit of its entry in the address map; no bits left, no entry).
    fn serve_address(
        &mut self,
        ip: std::net::Ipv4Addr,
        bit: u8,
        on: bool,
    ) -> Result<(), XdpProgramError> {
        let mut vteps = BpfHashMap::<_, u32, u8>::try_from(&mut self.vteps)?;
        let key = u32::from_ne_bytes(ip.octets());
        let old = match vteps.get(&key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => 0,
            Err(e) => return Err(e.into()),
        };
        let new = if on { old | bit } else { old & !bit };
        if new == 0 {
            return match vteps.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        Ok(vteps.insert(key, new, 0)?)
    }

    /// Frames to `mac` go to the kernel again.
    pub fn remove_guest(&mut self, mac: MacAddr) -> Result<(), XdpProgramError> {
        match BpfHashMap::<_, u64, u8>::try_from(&mut self.macs)?.remove(&mac_key(mac)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The fd of a map of one of the kinds the program uses.
fn map_fd(map: &Map) -> Result<BorrowedFd<'_>, XdpProgramError> {
    match map {
        Map::XskMap(d) | Map::HashMap(d) => Ok(d.fd().as_fd()),
        _ => Err(XdpProgramError::Handover("unexpected map kind".into())),
    }
}

/// A copy of this process's bpf_link fd that attaches program `prog_id` to
/// `ifindex` (aya keeps its link's fd to itself), found by the kernel's
/// description of each open fd (`link_type`, `prog_id`, `ifindex` in
/// /proc/self/fdinfo). `None` when there is none.
fn xdp_link_fd(ifindex: u32, prog_id: u32) -> std::io::Result<Option<OwnedFd>> {
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if is_xdp_link(&info, ifindex, prog_id) {
            // SAFETY: `fd` is open in this process (it was listed and read
            // just now), and the copy made here is owned by the caller.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if copy < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `copy` is a fresh descriptor nothing else owns.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(copy) }));
        }
    }
    Ok(None)
}

/// Whether an fdinfo text describes the XDP link of `prog_id` on `ifindex`.
fn is_xdp_link(info: &str, ifindex: u32, prog_id: u32) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("link_type") == Some("xdp")
        && field("prog_id") == Some(prog_id.to_string().as_str())
        && field("ifindex") == Some(ifindex.to_string().as_str())
}

/// The map key: the six address bytes as they lie in the frame, zero-padded,
/// read as a native-endian u64 (the program copies them the same way).
fn mac_key(mac: MacAddr) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac.0);
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::is_xdp_link;

    #[test]
    fn the_link_is_known_by_its_fdinfo() {
        let info = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t2072\nlink_type:\txdp\nlink_id:\t7\nprog_tag:\t0123456789abcdef\nprog_id:\t42\nifindex:\t5\n";
        assert!(is_xdp_link(info, 5, 42));
        assert!(!is_xdp_link(info, 4, 42), "another interface");
        assert!(!is_xdp_link(info, 5, 43), "another program");
        assert!(!is_xdp_link(&info.replace("xdp", "tcx"), 5, 42));
        assert!(!is_xdp_link("pos:\t0\nflags:\t02\n", 5, 42), "not a link");
    }
}
