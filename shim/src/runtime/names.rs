//! Name reservations: a pod is keyed by (name, namespace, uid, attempt), a container by
//! (pod, name, attempt). A reservation is taken before the object is created, so concurrent
//! duplicates cannot both create.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Names {
    by_name: BTreeMap<String, String>,
}

/// The reservation key of a pod.
pub fn pod_key(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("pod\0{name}\0{namespace}\0{uid}\0{attempt}")
}

/// The reservation key of a container.
pub fn container_key(pod_id: &str, name: &str, attempt: u32) -> String {
    format!("ctr\0{pod_id}\0{name}\0{attempt}")
}

impl Names {
    /// Reserves `key` for `id`; `Err(existing id)` if taken.
    pub fn reserve(&mut self, key: String, id: &str) -> Result<(), String> {
        match self.by_name.get(&key) {
            Some(existing) => Err(existing.clone()),
            None => {
                self.by_name.insert(key, id.to_owned());
                Ok(())
            }
        }
    }

    pub fn release(&mut self, key: &str) {
        self.by_name.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_release() {
        let mut n = Names::default();
        let k = pod_key("a", "ns", "u", 0);
        n.reserve(k.clone(), "id1").unwrap();
        assert_eq!(n.reserve(k.clone(), "id2"), Err("id1".into()));
        assert!(n.reserve(pod_key("a", "ns", "u", 1), "id3").is_ok());
        n.release(&k);
        n.reserve(k, "id2").unwrap();
    }
}
