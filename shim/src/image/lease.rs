//! Layer leases: a container holds one on its image's layer dirs for as long as its rootfs
//! may be mounted, and garbage collection never deletes a leased dir, whatever happened to the
//! image meanwhile.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

/// Lease counts by layer dir, shared by the store and every lease.
#[derive(Debug, Default, Clone)]
pub struct Leases(Arc<Mutex<HashMap<PathBuf, usize>>>);

impl Leases {
    /// Leases `dirs` until the returned lease is dropped.
    pub fn take(&self, dirs: Vec<PathBuf>) -> LayerLease {
        let mut counts = self.0.lock();
        for dir in &dirs {
            *counts.entry(dir.clone()).or_default() += 1;
        }
        LayerLease {
            leases: self.clone(),
            dirs,
        }
    }

    /// Every dir under a lease now.
    pub fn leased(&self) -> HashSet<PathBuf> {
        self.0.lock().keys().cloned().collect()
    }
}

/// Layer dirs kept from garbage collection while this lives.
#[derive(Debug)]
pub struct LayerLease {
    leases: Leases,
    dirs: Vec<PathBuf>,
}

impl LayerLease {
    /// The leased dirs, lowest layer first.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for LayerLease {
    fn drop(&mut self) {
        let mut counts = self.leases.0.lock();
        for dir in &self.dirs {
            if let Some(n) = counts.get_mut(dir) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(dir);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_stays_leased_until_its_last_lease_drops() {
        let leases = Leases::default();
        let a = leases.take(vec!["/l/1".into(), "/l/2".into()]);
        let b = leases.take(vec!["/l/2".into()]);
        assert_eq!(a.dirs().len(), 2);
        drop(a);
        assert_eq!(leases.leased(), HashSet::from([PathBuf::from("/l/2")]));
        drop(b);
        assert!(leases.leased().is_empty());
    }
}
