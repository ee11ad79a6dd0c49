//! Shifted ownership, for containers in a user namespace (`strata run --userns private`),
//! as fuse-overlayfs's `uidmapping=`/`gidmapping=` do it: the branches keep the image's own
//! ids (0 is the container's root), and the FUSE server shows the kernel each id
//! `host_start` higher, which the container's uid_map (`0 host_start size`) turns back.
//! Ids the container creates (owners, chown, POSIX ACL entries) go the other way, so the
//! upper dir stays in the image's ids and commits as it would without the namespace.

use std::borrow::Cow;
use std::ffi::OsStr;

/// What the kernel shows for an id outside the shifted range (the kernel's overflow id).
const NOBODY: u32 = 65_534;

/// ACL entry tags whose id is a user or a group (linux/posix_acl.h).
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
/// The xattr form of a POSIX ACL: a 4-byte version, then 8-byte entries.
const ACL_HEADER: usize = 4;
const ACL_ENTRY: usize = 8;

/// File capabilities (linux/capability.h): v2 has no owner (it is the filesystem's root's),
/// v3 adds the uid of the root they belong to.
const CAPS_REVISION_MASK: u32 = 0xff00_0000;
const CAPS_REVISION_2: u32 = 0x0200_0000;
const CAPS_REVISION_3: u32 = 0x0300_0000;
const CAPS_V2_SIZE: usize = 20;
const CAPS_V3_SIZE: usize = 24;

/// The xattrs that hold ids: POSIX ACLs and file capabilities.
const ACLS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];
const CAPS: &str = "security.capability";

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
    pub(crate) fn to_image(self, id: u32) -> u32 {
        match id.checked_sub(self.host_start) {
            Some(inside) if inside < self.size => inside,
            _ if id == 0 => 0,
            _ => NOBODY,
        }
    }

    /// An xattr value set through the mount, in the kernel's ids, into the image's.
    /// Only values that hold ids are copied.
    pub(crate) fn xattr_in<'v>(self, name: &OsStr, value: &'v [u8]) -> Cow<'v, [u8]> {
        if ACLS.iter().any(|acl| name == *acl) {
            let mut value = value.to_vec();
            self.map_acl(&mut value, IdShift::to_image);
            Cow::Owned(value)
        } else if name == CAPS {
            let mut value = value.to_vec();
            self.caps_in(&mut value);
            Cow::Owned(value)
        } else {
            Cow::Borrowed(value)
        }
    }

    /// An xattr value read through the mount, in the image's ids, into the kernel's.
    pub(crate) fn xattr_out(self, name: &OsStr, value: &mut [u8]) {
        if ACLS.iter().any(|acl| name == *acl) {
            self.map_acl(value, IdShift::to_host);
        } else if name == CAPS {
            self.caps_out(value);
        }
    }

    /// File capabilities on their way in. Set from inside the namespace, the kernel makes
    /// them v3, owned by the namespace's root (host `host_start`): they are stored as v2,
    /// the image's root's, as a layer carries them; another owner is stored in image ids.
    fn caps_in(self, value: &mut Vec<u8>) {
        if let Some(rootid) = caps_v3_rootid(value) {
            let inside = self.to_image(rootid);
            if inside == 0 {
                let magic = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
                let magic = (magic & !CAPS_REVISION_MASK) | CAPS_REVISION_2;
                value[..4].copy_from_slice(&magic.to_le_bytes());
                value.truncate(CAPS_V2_SIZE);
            } else {
                value[CAPS_V2_SIZE..].copy_from_slice(&inside.to_le_bytes());
            }
        }
    }

    /// File capabilities on their way out: a v3 owner is shown as the kernel sees it.
    fn caps_out(self, value: &mut [u8]) {
        if let Some(rootid) = caps_v3_rootid(value) {
            value[CAPS_V2_SIZE..].copy_from_slice(&self.to_host(rootid).to_le_bytes());
        }
    }

    /// The ids of a POSIX ACL xattr value, mapped with `map`; other values unchanged.
    fn map_acl(self, value: &mut [u8], map: impl Fn(Self, u32) -> u32) {
        if value.len() < ACL_HEADER || !(value.len() - ACL_HEADER).is_multiple_of(ACL_ENTRY) {
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

/// The owner of v3 file capabilities; None for v2 or a malformed value.
fn caps_v3_rootid(value: &[u8]) -> Option<u32> {
    if value.len() != CAPS_V3_SIZE {
        return None;
    }
    let magic = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
    (magic & CAPS_REVISION_MASK == CAPS_REVISION_3).then(|| {
        let id = &value[CAPS_V2_SIZE..];
        u32::from_le_bytes([id[0], id[1], id[2], id[3]])
    })
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
        assert_eq!(SHIFT.to_image(100_000), 0);
        assert_eq!(SHIFT.to_image(165_535), 65_535);
        assert_eq!(SHIFT.to_image(165_536), NOBODY);
        assert_eq!(SHIFT.to_image(1000), NOBODY);
        assert_eq!(SHIFT.to_image(0), 0);
        for id in [0, 1, 1000, 65_535] {
            assert_eq!(SHIFT.to_image(SHIFT.to_host(id)), id);
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
        SHIFT.map_acl(&mut value, IdShift::to_image);
        assert_eq!(value, acl(1000, 50));
        let mut odd = vec![2, 0, 0, 0, 1];
        SHIFT.map_acl(&mut odd, IdShift::to_host);
        assert_eq!(odd, [2, 0, 0, 0, 1], "a malformed value is left alone");
    }

    #[test]
    fn file_capabilities_of_the_namespace_root_are_stored_as_v2() {
        let caps = |revision: u32, rootid: Option<u32>| {
            let mut v = (revision | 1).to_le_bytes().to_vec(); // effective
            v.extend([0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // net_bind_service
            if let Some(id) = rootid {
                v.extend(id.to_le_bytes());
            }
            v
        };
        let mut value = caps(CAPS_REVISION_3, Some(100_000));
        SHIFT.caps_in(&mut value);
        assert_eq!(value, caps(CAPS_REVISION_2, None));
        let mut value = caps(CAPS_REVISION_3, Some(101_000));
        SHIFT.caps_in(&mut value);
        assert_eq!(value, caps(CAPS_REVISION_3, Some(1000)));
        SHIFT.caps_out(&mut value);
        assert_eq!(value, caps(CAPS_REVISION_3, Some(101_000)));
        let mut v2 = caps(CAPS_REVISION_2, None);
        SHIFT.caps_in(&mut v2);
        SHIFT.caps_out(&mut v2);
        assert_eq!(v2, caps(CAPS_REVISION_2, None), "v2 has no owner to shift");
    }
}
