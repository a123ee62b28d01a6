//! The control plane's handle on the switch: through the shards' mailboxes
//! it adds and removes ports (choosing their switch-wide ids and home
//! shards), and keeps what every shard must know in step: where each port
//! lives, static FDB entries, and the weights of the peer links.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine::{RemotePort, SwitchEngine};
use super::fdb::{FdbEntry, FdbEntryState};
use super::port::{PortCounters, PortId, PortNetwork, SharedPortCounters, SwitchPort};
use crate::engine::{MailboxError, MailboxSender};
use snapnet_wire::MacAddr;

const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a port lives and what the other shards need to know of it.
#[derive(Clone, Copy)]
struct Home {
    shard: usize,
    network: PortNetwork,
    queues: usize,
    weight: u32,
}

#[derive(Clone)]
pub struct SwitchHandle {
    shards: Vec<MailboxSender<SwitchEngine>>,
    /// By switch-wide port id. Control-plane state only: the shards get
    /// their copy through their mailboxes.
    homes: Arc<Mutex<Vec<Option<Home>>>>,
}

type Entries = Vec<(u32, MacAddr, FdbEntry)>;

impl SwitchHandle {
    pub(super) fn new(shards: Vec<MailboxSender<SwitchEngine>>) -> Self {
        Self {
            shards,
            homes: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard port `port` lives on.
    pub fn shard_of(&self, port: PortId) -> Option<usize> {
        self.lock()
            .get(usize::from(port.0))
            .copied()
            .flatten()
            .map(|h| h.shard)
    }

    /// The shard with the fewest ports (the lowest of equals).
    pub fn least_loaded_shard(&self) -> usize {
        let homes = self.lock();
        (0..self.shards.len())
            .min_by_key(|s| homes.iter().flatten().filter(|h| h.shard == *s).count())
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Home>>> {
        self.homes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn call<R: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&mut SwitchEngine) -> R + Send + 'static,
    ) -> Result<R, MailboxError> {
        self.shards[shard].call(CONTROL_TIMEOUT, f)
    }

    /// Adds a port on the least loaded shard.
    pub fn add_port(
        &self,
        port: SwitchPort,
        static_macs: Vec<MacAddr>,
    ) -> Result<(PortId, Arc<SharedPortCounters>), MailboxError> {
        self.add_port_on(self.least_loaded_shard(), port, static_macs)
    }

    /// Adds a port homed on `shard`; `static_macs` are pinned to it in every
    /// shard's FDB.
    pub fn add_port_on(
        &self,
        shard: usize,
        port: SwitchPort,
        static_macs: Vec<MacAddr>,
    ) -> Result<(PortId, Arc<SharedPortCounters>), MailboxError> {
        let shard = shard.min(self.shards.len() - 1);
        let mut homes = self.lock();
        let slot = homes
            .iter()
            .position(Option::is_none)
            .unwrap_or(homes.len());
        if slot == homes.len() {
            homes.push(None);
        }
        let id = PortId(slot as u16);
        let home = Home {
            shard,
            network: port.network,
            queues: port.outputs.len(),
            weight: port.weight,
        };
        let macs = static_macs.clone();
        let counters = self.call(shard, move |s| s.attach(id, port, &macs))?;
        homes[slot] = Some(home);
        let remote = RemotePort {
            shard,
            network: home.network,
            queues: home.queues,
        };
        for other in (0..self.shards.len()).filter(|o| *o != shard) {
            let macs = static_macs.clone();
            self.call(other, move |s| s.attach_remote(id, remote, &macs))?;
        }
        self.share_weights(&homes)?;
        Ok((id, counters))
    }

    /// Removes a port from its shard and from every other shard's view.
    pub fn remove_port(&self, id: PortId) -> Result<bool, MailboxError> {
        let mut homes = self.lock();
        let Some(home) = homes.get(usize::from(id.0)).copied().flatten() else {
            return Ok(false);
        };
        let removed = self.call(home.shard, move |s| s.remove_port(id))?;
        homes[usize::from(id.0)] = None;
        for other in (0..self.shards.len()).filter(|o| *o != home.shard) {
            self.call(other, move |s| s.detach_remote(id))?;
        }
        self.share_weights(&homes)?;
        Ok(removed)
    }

    /// Tells each shard the weight of its link from every other shard: the
    /// sum of that shard's ports' weights, so that at a congested output the
    /// ports of all shards get shares close to their weights.
    fn share_weights(&self, homes: &[Option<Home>]) -> Result<(), MailboxError> {
        if self.shards.len() == 1 {
            return Ok(());
        }
        let mut weights = vec![0u32; self.shards.len()];
        for h in homes.iter().flatten() {
            weights[h.shard] = weights[h.shard].saturating_add(h.weight);
        }
        for shard in 0..self.shards.len() {
            let weights = weights.clone();
            self.call(shard, move |s| {
                for p in s.peers_in.iter_mut() {
                    p.weight = weights[p.from].max(1);
                }
            })?;
        }
        Ok(())
    }

    /// Pins `mac` in `network` to port `port` in every shard; false when
    /// the port does not exist.
    pub fn fdb_add_static(
        &self,
        network: u32,
        mac: MacAddr,
        port: PortId,
    ) -> Result<bool, MailboxError> {
        let homes = self.lock();
        if homes.get(usize::from(port.0)).copied().flatten().is_none() {
            return Ok(false);
        }
        for shard in 0..self.shards.len() {
            self.call(shard, move |s| s.fdb.add_static(network, mac, port))?;
        }
        Ok(true)
    }

    /// Adds to a port's counters the ones an upgrade's old process (or the
    /// port before a rollback re-made it) had for it, in its engine and in
    /// the published copy: what the port counted since it was made stays.
    /// False: no such port.
    pub fn add_port_counters(
        &self,
        port: PortId,
        counters: PortCounters,
    ) -> Result<bool, MailboxError> {
        let shard = {
            let homes = self.lock();
            let Some(home) = homes.get(usize::from(port.0)).and_then(Option::as_ref) else {
                return Ok(false);
            };
            home.shard
        };
        self.call(shard, move |s| {
            match s
                .ports
                .get_mut(usize::from(port.0))
                .and_then(Option::as_mut)
            {
                Some(p) => {
                    p.counters.accumulate(&counters);
                    p.shared.publish(&p.counters);
                    true
                }
                None => false,
            }
        })
    }

    /// Changes a port's deficit-round-robin weight; false when no such port.
    pub fn set_port_weight(&self, port: PortId, weight: u32) -> Result<bool, MailboxError> {
        let mut homes = self.lock();
        let Some(home) = homes.get_mut(usize::from(port.0)).and_then(Option::as_mut) else {
            return Ok(false);
        };
        home.weight = weight.max(1);
        let shard = home.shard;
        let set = self.call(shard, move |s| {
            match s
                .ports
                .get_mut(usize::from(port.0))
                .and_then(Option::as_mut)
            {
                Some(p) => {
                    p.weight = weight.max(1);
                    true
                }
                None => false,
            }
        })?;
        self.share_weights(&homes)?;
        Ok(set)
    }

    /// Forgets `mac` in `network` in every shard; false when none knew it.
    pub fn fdb_remove(&self, network: u32, mac: MacAddr) -> Result<bool, MailboxError> {
        let _homes = self.lock();
        let mut found = false;
        for shard in 0..self.shards.len() {
            found |= self.call(shard, move |s| s.fdb.remove(network, mac))?;
        }
        Ok(found)
    }

    /// Returns once every shard has finished the poll it was in and the
    /// one after (each call runs between two of a shard's polls): a frame
    /// that was in a port's input link when this began has left the switch,
    /// through a peer link too, when every input was empty by then.
    pub fn settle(&self) -> Result<(), MailboxError> {
        for _ in 0..=self.shards.len() {
            for shard in 0..self.shards.len() {
                self.call(shard, |_| ())?;
            }
        }
        Ok(())
    }

    /// Every shard gives the frames of its cache back to the pool.
    pub fn release_caches(&self) -> Result<(), MailboxError> {
        for shard in 0..self.shards.len() {
            self.call(shard, |s| s.release_cache())?;
        }
        Ok(())
    }

    /// Every live entry, with ports named by `names` (an upgrade's state),
    /// from every shard; the first shard's word counts where they differ.
    pub fn fdb_export(
        &self,
        names: HashMap<PortId, String>,
    ) -> Result<Vec<FdbEntryState>, MailboxError> {
        let names = Arc::new(names);
        let mut seen = std::collections::HashSet::new();
        let mut all = Vec::new();
        for shard in 0..self.shards.len() {
            let names = names.clone();
            let entries = self.call(shard, move |s| s.fdb().export(|p| names.get(&p).cloned()))?;
            all.extend(
                entries
                    .into_iter()
                    .filter(|e| seen.insert((e.network, e.mac))),
            );
        }
        Ok(all)
    }

    /// Takes over `entries` in every shard, with ports found by name in
    /// `ids`; returns the entries the first shard did not take.
    pub fn fdb_import(
        &self,
        entries: Vec<FdbEntryState>,
        ids: HashMap<String, PortId>,
    ) -> Result<usize, MailboxError> {
        let (entries, ids) = (Arc::new(entries), Arc::new(ids));
        let mut skipped = 0;
        for shard in 0..self.shards.len() {
            let (entries, ids) = (entries.clone(), ids.clone());
            let n = self.call(shard, move |s| {
                s.fdb_mut().import(&entries, |name| ids.get(name).copied())
            })?;
            if shard == 0 {
                skipped = n;
            }
        }
        Ok(skipped)
    }

    /// Every entry: (network, MAC, entry). Where shards disagree (an
    /// address moved and a shard has not seen it since), the shard that
    /// owns the entry's port is right: it learned it from the port itself.
    pub fn fdb_entries(&self) -> Result<Entries, MailboxError> {
        let homes = self.lock();
        let mut merged: BTreeMap<(u32, MacAddr), (FdbEntry, bool)> = BTreeMap::new();
        for shard in 0..self.shards.len() {
            for (network, mac, e) in self.call(shard, |s| s.fdb().entries())? {
                let own = homes
                    .get(usize::from(e.port.0))
                    .copied()
                    .flatten()
                    .is_some_and(|h| h.shard == shard);
                let slot = merged.entry((network, mac)).or_insert((e, own));
                if own && !slot.1 {
                    *slot = (e, own);
                }
            }
        }
        Ok(merged
            .into_iter()
            .map(|((network, mac), (e, _))| (network, mac, e))
            .collect())
    }
}
