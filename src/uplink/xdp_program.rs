//! The uplink's XDP program (source: `xdp/snapnet_uplink.bpf.c`), loaded with
//! aya and attached through a bpf_link, so the kernel detaches it when the
//! last reference goes: when snapnet exits, even by `kill -9`, nothing is left
//! on the interface for the next run to trip over.

use std::os::fd::AsRawFd;

use aya::maps::{HashMap as BpfHashMap, MapData, XskMap};
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};
use thiserror::Error;

use crate::packet::wire::MacAddr;

/// The compiled program, rebuilt by `xdp/build.sh` (a test checks it matches
/// the source).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../xdp/snapnet_uplink.bpf.o");

const PROGRAM: &str = "snapnet_uplink";
const XSK_MAP: &str = "snapnet_xsks";
const MAC_MAP: &str = "snapnet_guest_macs";
const VTEP_MAP: &str = "snapnet_vteps";

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
    #[error("cannot attach XDP to {interface} in {mode:?} mode: {source}")]
    Attach {
        interface: String,
        mode: XdpMode,
        source: aya::programs::ProgramError,
    },
}

/// The program attached to one interface, with its two maps.
pub struct UplinkProgram {
    mode: XdpMode,
    xsks: XskMap<MapData>,
    macs: BpfHashMap<MapData, u64, u8>,
    vteps: BpfHashMap<MapData, u32, u8>,
    // Last: dropping it detaches the program (maps must be dropped first only
    // for tidiness; the kernel refcounts them).
    _ebpf: Ebpf,
}

impl UplinkProgram {
    /// Loads the program and attaches it to `ifindex` in `mode`. Returns the
    /// mode actually used (Auto resolves to Native or Generic).
    pub fn attach(interface: &str, ifindex: u32, mode: XdpMode) -> Result<Self, XdpProgramError> {
        // The program has no CO-RE relocations, so the kernel's BTF is not
        // needed: `Ebpf::load` would parse all of it (megabytes) a second time
        // on top of the loader's own parse, for every uplink added.
        let mut ebpf = EbpfLoader::new().btf(None).load(OBJECT)?;
        let xsks = XskMap::try_from(
            ebpf.take_map(XSK_MAP)
                .ok_or(XdpProgramError::Missing(XSK_MAP))?,
        )?;
        let vteps = BpfHashMap::try_from(
            ebpf.take_map(VTEP_MAP)
                .ok_or(XdpProgramError::Missing(VTEP_MAP))?,
        )?;
        let macs = BpfHashMap::try_from(
            ebpf.take_map(MAC_MAP)
                .ok_or(XdpProgramError::Missing(MAC_MAP))?,
        )?;
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
        Ok(Self {
            mode: used,
            xsks,
            macs,
            vteps,
            _ebpf: ebpf,
        })
    }

    /// Native or Generic.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Frames for guests arriving on `queue` go to `socket`.
    pub fn set_socket(&mut self, queue: u32, socket: &impl AsRawFd) -> Result<(), XdpProgramError> {
        Ok(self.xsks.set(queue, socket.as_raw_fd(), 0)?)
    }

    /// Frames to `mac` are redirected to snapnet from now on.
    pub fn add_guest(&mut self, mac: MacAddr) -> Result<(), XdpProgramError> {
        Ok(self.macs.insert(mac_key(mac), 1, 0)?)
    }

    /// VXLAN to `ip` (this host's underlay address) is redirected to snapnet.
    pub fn add_vtep(&mut self, ip: std::net::Ipv4Addr) -> Result<(), XdpProgramError> {
        Ok(self.vteps.insert(u32::from_ne_bytes(ip.octets()), 1, 0)?)
    }

    /// Frames to `mac` go to the kernel again.
    pub fn remove_guest(&mut self, mac: MacAddr) -> Result<(), XdpProgramError> {
        match self.macs.remove(&mac_key(mac)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The map key: the six address bytes as they lie in the frame, zero-padded,
/// read as a native-endian u64 (the program copies them the same way).
fn mac_key(mac: MacAddr) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac.0);
    u64::from_ne_bytes(b)
}
