//! Shifted ownership, for containers in a user namespace (`strata run --userns private`),
//! as fuse-overlayfs's `uidmapping=`/`gidmapping=` do it: the branches keep the image's own
//! ids (0 is the container's root), and the FUSE server shows the kernel each id
//! `host_start` higher, which the container's uid_map (`0 host_start size`) turns back.
//! Ids the container creates (owners, chown, POSIX ACL entries) go the other way, so the
//! upper dir stays in the image's ids and commits as it would without the namespace.

/// What the kernel shows for an id outside the shifted range (the kernel's overflow id).
const NOBODY: u32 = 65_534;

/// ACL entry tags whose id is a user or a group (linux/posix_acl.h).
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
/// The xattr form of a POSIX ACL: a 4-byte version, then 8-byte entries.
const ACL_HEADER: usize = 4;
const ACL_ENTRY: usize = 8;

/// Names of the xattrs that hold POSIX ACLs.
pub(crate) fn is_acl(name: &std::ffi::OsStr) -> bool {
    name == "system.posix_acl_access" || name == "system.posix_acl_default"
}

/// Container ids `0..size` are host ids `host_start..host_start + size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdShift {
    pub host_start: u32,
    pub size: u32,
}

impl IdShift {
    /// The id the kernel sees for `id` on disk.
    pub(crate) fn to_host(self, id: u32) -> u32 {
        if id < self.size {
            id + self.host_start
        } else {
            NOBODY
        }
    }

    /// The id stored for `id` from the kernel: the container's id; host root acting on the
    /// mount (strata itself) counts as the container's root; any other is nobody.
    pub(crate) fn from_host(self, id: u32) -> u32 {
        match id.checked_sub(self.host_start) {
            Some(inside) if inside < self.size => inside,
            _ if id == 0 => 0,
            _ => NOBODY,
        }
    }

    /// The ids of a POSIX ACL xattr value, mapped with `map`; other values unchanged.
    pub(crate) fn map_acl(self, value: &mut [u8], map: impl Fn(Self, u32) -> u32) {
        if value.len() < ACL_HEADER || (value.len() - ACL_HEADER) % ACL_ENTRY != 0 {
            return;
        }
        for entry in value[ACL_HEADER..].chunks_exact_mut(ACL_ENTRY) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            if tag == ACL_USER || tag == ACL_GROUP {
                let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
                entry[4..8].copy_from_slice(&map(self, id).to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIFT: IdShift = IdShift {
        host_start: 100_000,
        size: 65_536,
    };

    #[test]
    fn ids_shift_both_ways_and_outsiders_are_nobody() {
        assert_eq!(SHIFT.to_host(0), 100_000);
        assert_eq!(SHIFT.to_host(1000), 101_000);
        assert_eq!(SHIFT.to_host(70_000), NOBODY);
        assert_eq!(SHIFT.from_host(100_000), 0);
        assert_eq!(SHIFT.from_host(165_535), 65_535);
        assert_eq!(SHIFT.from_host(165_536), NOBODY);
        assert_eq!(SHIFT.from_host(1000), NOBODY);
        assert_eq!(SHIFT.from_host(0), 0);
        for id in [0, 1, 1000, 65_535] {
            assert_eq!(SHIFT.from_host(SHIFT.to_host(id)), id);
        }
    }

    #[test]
    fn acl_user_and_group_entries_shift_and_the_rest_stay() {
        let entry = |tag: u16, perm: u16, id: u32| {
            let mut e = tag.to_le_bytes().to_vec();
            e.extend(perm.to_le_bytes());
            e.extend(id.to_le_bytes());
            e
        };
        let acl = |user: u32, group: u32| {
            let mut v = 2u32.to_le_bytes().to_vec();
            v.extend(entry(0x01, 6, u32::MAX)); // owner
            v.extend(entry(ACL_USER, 4, user));
            v.extend(entry(ACL_GROUP, 4, group));
            v.extend(entry(0x10, 4, u32::MAX)); // mask
            v.extend(entry(0x20, 0, u32::MAX)); // other
            v
        };
        let mut value = acl(1000, 50);
        SHIFT.map_acl(&mut value, IdShift::to_host);
        assert_eq!(value, acl(101_000, 100_050));
        SHIFT.map_acl(&mut value, IdShift::from_host);
        assert_eq!(value, acl(1000, 50));
        let mut odd = vec![2, 0, 0, 0, 1];
        SHIFT.map_acl(&mut odd, IdShift::to_host);
        assert_eq!(odd, [2, 0, 0, 0, 1], "a malformed value is left alone");
    }
}
