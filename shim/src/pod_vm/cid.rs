//! Guest vsock context ids: each running pod VM gets its own, so no two VMs can be confused
//! even by a backend whose CIDs are host-global (vhost-vsock).

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// The first CID a guest may have (0-2 are reserved: hypervisor, local, host).
const FIRST_GUEST_CID: u32 = 3;

/// A set of CIDs in use.
#[derive(Debug, Default)]
pub struct CidAllocator {
    used: Mutex<BTreeSet<u32>>,
}

/// A CID held until dropped.
#[derive(Debug)]
pub struct CidLease {
    cid: u32,
    owner: Arc<CidAllocator>,
}

impl CidLease {
    pub fn cid(&self) -> u32 {
        self.cid
    }
}

impl Drop for CidLease {
    fn drop(&mut self) {
        let mut used = self.owner.used.lock();
        used.remove(&self.cid);
    }
}

impl CidAllocator {
    /// The process-wide allocator.
    pub fn global() -> Arc<CidAllocator> {
        static GLOBAL: OnceLock<Arc<CidAllocator>> = OnceLock::new();
        GLOBAL.get_or_init(Default::default).clone()
    }

    /// Marks a CID of an adopted VM as used (it is already the VM's).
    pub fn claim(self: &Arc<Self>, cid: u32) -> CidLease {
        let mut used = self.used.lock();
        used.insert(cid);
        CidLease {
            cid,
            owner: self.clone(),
        }
    }

    /// The lowest free CID.
    pub fn allocate(self: &Arc<Self>) -> CidLease {
        let mut used = self.used.lock();
        let mut cid = FIRST_GUEST_CID;
        while used.contains(&cid) {
            cid += 1;
        }
        used.insert(cid);
        CidLease {
            cid,
            owner: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_and_reused_after_drop() {
        let a = Arc::new(CidAllocator::default());
        let x = a.allocate();
        let y = a.allocate();
        assert_eq!((x.cid(), y.cid()), (3, 4));
        drop(x);
        assert_eq!(a.allocate().cid(), 3);
    }
}
