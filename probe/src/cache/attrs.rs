//! First-packet attributes that are not part of the key (mark, owner, NFLOG prefix,
//! direction), interned: flows share one entry per distinct combination, so a flow carries a
//! 4-byte id instead of ~14 bytes plus an owned prefix. Entries are reference-counted and freed
//! with their last flow, so the table stays bounded by the live flows.

use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use labelflow_proto::Direction;

/// Resolves a uid to a user name; `None` leaves the numeric uid as the name.
pub type UserNameLookup = fn(u32) -> Option<String>;

/// Distinct uids whose name is remembered; beyond that, new uids are exported numerically.
const MAX_CACHED_UIDS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    pub mark: u32,
    pub uid: Option<u32>,
    pub direction: Option<Direction>,
    pub prefix: Box<[u8]>,
    /// Resolved once when the entry is created.
    pub user_name: Option<Arc<str>>,
    refs: u32,
}

impl Attr {
    fn matches(&self, mark: u32, uid: Option<u32>, dir: Option<Direction>, prefix: &[u8]) -> bool {
        self.refs > 0
            && self.mark == mark
            && self.uid == uid
            && self.direction == dir
            && *self.prefix == *prefix
    }
}

#[derive(Debug)]
pub(crate) struct AttrTable {
    entries: Vec<Attr>,
    index: HashTable<u32>,
    free: Vec<u32>,
    hasher: foldhash::fast::RandomState,
    /// The entry used last: consecutive packets of one rule mostly share it.
    last: u32,
    names: HashMap<u32, Arc<str>>,
    lookup: UserNameLookup,
}

fn hash_of(
    h: &foldhash::fast::RandomState,
    mark: u32,
    uid: Option<u32>,
    dir: Option<Direction>,
    prefix: &[u8],
) -> u64 {
    h.hash_one((mark, uid, dir.map(Direction::code), prefix))
}

impl AttrTable {
    pub fn new(lookup: UserNameLookup) -> Self {
        AttrTable {
            entries: Vec::new(),
            index: HashTable::new(),
            free: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
            last: u32::MAX,
            names: HashMap::new(),
            lookup,
        }
    }

    pub fn get(&self, id: u32) -> &Attr {
        &self.entries[id as usize]
    }

    /// Live entries (distinct attribute combinations in use).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Takes a reference on the entry for these attributes, creating it when new.
    pub fn acquire(
        &mut self,
        mark: u32,
        uid: Option<u32>,
        dir: Option<Direction>,
        prefix: &[u8],
    ) -> u32 {
        if let Some(a) = self.entries.get_mut(self.last as usize) {
            if a.matches(mark, uid, dir, prefix) {
                a.refs += 1;
                return self.last;
            }
        }
        let hash = hash_of(&self.hasher, mark, uid, dir, prefix);
        let entries = &mut self.entries;
        if let Some(&id) = self.index.find(hash, |&i| {
            entries[i as usize].matches(mark, uid, dir, prefix)
        }) {
            entries[id as usize].refs += 1;
            self.last = id;
            return id;
        }
        let user_name = uid.map(|u| self.user_name(u));
        let attr = Attr {
            mark,
            uid,
            direction: dir,
            prefix: prefix.into(),
            user_name,
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = attr;
                id
            }
            None => {
                self.entries.push(attr);
                (self.entries.len() - 1) as u32
            }
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(hash, id, |&i| {
            let a = &entries[i as usize];
            hash_of(hasher, a.mark, a.uid, a.direction, &a.prefix)
        });
        self.last = id;
        id
    }

    /// Drops a reference; the entry is freed with its last one.
    pub fn release(&mut self, id: u32) {
        let a = &mut self.entries[id as usize];
        a.refs -= 1;
        if a.refs > 0 {
            return;
        }
        let hash = hash_of(&self.hasher, a.mark, a.uid, a.direction, &a.prefix);
        if let Ok(entry) = self.index.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        a.prefix = Box::default();
        a.user_name = None;
        self.free.push(id);
    }

    fn user_name(&mut self, uid: u32) -> Arc<str> {
        if let Some(n) = self.names.get(&uid) {
            return n.clone();
        }
        let name: Arc<str> = match (self.lookup)(uid) {
            Some(n) => n.into(),
            None => uid.to_string().into(),
        };
        if self.names.len() < MAX_CACHED_UIDS {
            self.names.insert(uid, name.clone());
        }
        name
    }
}

/// The system's name for `uid` (`getpwuid_r(3)`: `/etc/passwd`, or whatever NSS is configured),
/// `None` when there is none.
pub fn system_user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `passwd` is a plain C struct of integers and pointers; all zeroes is a valid
        // value and getpwuid_r overwrites it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for writes for the duration of the call and `buf`'s
        // real length is passed with it.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success `pw_name` points to a NUL-terminated string inside `buf`, which
        // outlives this borrow.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_frees_entries() {
        let mut t = AttrTable::new(|uid| (uid == 0).then(|| "root".to_string()));
        let a = t.acquire(1, Some(0), Some(Direction::Egress), b"esp");
        let b = t.acquire(1, Some(0), Some(Direction::Egress), b"esp");
        assert_eq!(a, b);
        let c = t.acquire(1, Some(1000), Some(Direction::Egress), b"esp");
        assert_ne!(a, c);
        assert_eq!(t.get(a).user_name.as_deref(), Some("root"));
        assert_eq!(t.get(c).user_name.as_deref(), Some("1000"));
        assert_eq!(t.len(), 2);
        t.release(a);
        assert_eq!(t.len(), 2);
        t.release(b);
        assert_eq!(t.len(), 1);
        // Found again through the index after `last` moved on.
        let d = t.acquire(1, Some(1000), Some(Direction::Egress), b"esp");
        assert_eq!(d, c);
        let e = t.acquire(2, None, None, b"");
        assert_eq!(e, a, "freed id reused");
        assert_eq!(t.get(e).user_name, None);
    }

    #[test]
    fn root_resolves_through_the_system() {
        assert_eq!(system_user_name(0).as_deref(), Some("root"));
        assert_eq!(system_user_name(3_999_999_999), None);
    }
}
