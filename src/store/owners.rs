//! Who created which register, for the per-client register quota
//! (`--registers-per-client-max`): the in-memory and redb ledgers' count,
//! under the ledger's lock. (PostgreSQL keeps the owner in the register's
//! row and counts there.)
//!
//! Registers loaded from a redb file have no recorded owner: they count
//! against no client, and deleting one gives no one quota back.

use std::collections::HashMap;

use crate::store::QuotaKey;

/// Register name → creator, and creator → registers held. Only looked up,
/// never iterated, so hash order reaches no output.
#[derive(Debug, Default)]
pub(crate) struct RegisterOwners {
    by_name: HashMap<String, QuotaKey>,
    held: HashMap<QuotaKey, usize>,
}

impl RegisterOwners {
    /// Registers `owner` created that still exist.
    pub(crate) fn held(&self, owner: &QuotaKey) -> usize {
        self.held.get(owner).copied().unwrap_or(0)
    }

    /// `owner` created register `name`.
    pub(crate) fn created(&mut self, name: &str, owner: QuotaKey) {
        *self.held.entry(owner.clone()).or_insert(0) += 1;
        if let Some(previous) = self.by_name.insert(name.to_owned(), owner) {
            // Cannot happen (a name is created once until removed); keep
            // the counts true if it does.
            self.release(&previous);
        }
    }

    /// Register `name` was removed: its creator gets the quota back.
    pub(crate) fn removed(&mut self, name: &str) {
        if let Some(owner) = self.by_name.remove(name) {
            self.release(&owner);
        }
    }

    /// Keeps only the registers `exists` says still exist (memory reloaded
    /// from disk after a failure: what was not durable is gone).
    pub(crate) fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.by_name.retain(|name, _| exists(name));
        self.held.clear();
        for owner in self.by_name.values() {
            *self.held.entry(owner.clone()).or_insert(0) += 1;
        }
    }

    fn release(&mut self, owner: &QuotaKey) {
        if let Some(n) = self.held.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creating_counts_and_removing_gives_quota_back() {
        let a = QuotaKey::Identity("a".into());
        let b = QuotaKey::Anonymous;
        let mut o = RegisterOwners::default();
        o.created("x", a.clone());
        o.created("y", a.clone());
        o.created("z", b.clone());
        assert_eq!((o.held(&a), o.held(&b)), (2, 1));
        o.removed("x");
        o.removed("never-created");
        assert_eq!((o.held(&a), o.held(&b)), (1, 1));
        o.removed("z");
        assert_eq!(o.held(&b), 0);
        assert!(
            !o.held.contains_key(&b),
            "an owner with nothing is forgotten"
        );
    }
}
