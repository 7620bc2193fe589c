//! The bounded map every table of the daemon is kept in: path infos, share
//! verdicts, recent "have" answers, peers, request rates, NAR sources. It
//! holds at most twice its capacity, in two generations: when the current
//! generation is full, the previous one (the entries neither inserted nor
//! used since the current one began) is dropped whole. Every operation is
//! O(1), and what strangers send can never grow it further.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

pub struct Bounded<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
    capacity: usize,
}

impl<K: Hash + Eq, V> Bounded<K, V> {
    /// A map of at most `2 × capacity` entries.
    pub fn new(capacity: usize) -> Bounded<K, V> {
        Bounded {
            current: HashMap::new(),
            previous: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// The entry, moved to the current generation: used entries stay.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.current.contains_key(key) {
            let (key, value) = self.previous.remove_entry(key)?;
            self.insert(key, value);
        }
        self.current.get_mut(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts into the current generation, first dropping the previous
    /// one if the current one is full.
    pub fn insert(&mut self, key: K, value: V) {
        self.previous.remove(&key);
        if self.current.len() >= self.capacity && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }

    /// The entry for `key`, made with `make` if there is none.
    pub fn entry_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V
    where
        K: Clone,
    {
        if self.get_mut(&key).is_none() {
            self.insert(key.clone(), make());
        }
        self.current.get_mut(&key).expect("just inserted")
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current
            .remove(key)
            .or_else(|| self.previous.remove(key))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.current.retain(&mut keep);
        self.previous.retain(keep);
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.current.iter().chain(&self.previous)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.current.values_mut().chain(self.previous.values_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_twice_its_capacity_and_drops_the_oldest() {
        let mut map = Bounded::new(100);
        for i in 0..10_000u32 {
            map.insert(i, i);
            assert!(map.len() <= 200);
        }
        assert!(map.contains_key(&9_999));
        assert!(!map.contains_key(&0));
    }

    #[test]
    fn used_entries_survive_a_flood() {
        let mut map = Bounded::new(10);
        map.insert("old".to_string(), 1);
        for i in 0..1000 {
            map.insert(i.to_string(), 0);
            // A peer heard again between bursts stays.
            if i % 5 == 0 {
                *map.get_mut("old").expect("kept") += 1;
            }
        }
        assert_eq!(map.get("old"), Some(&201));
        assert_eq!(map.remove("old"), Some(201));
        assert!(map.get("old").is_none());
    }
}
