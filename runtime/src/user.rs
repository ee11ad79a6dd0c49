//! Resolves the `--user` string (``, `name`, `uid`, `uid:gid`, `name:group`) against the
//! container's own /etc/passwd and /etc/group, as docker and runc's libcontainer/user do:
//! a name must exist; a bare numeric uid may be absent (gid 0, home /); supplementary
//! groups are the groups listing the user name, unless a group was given explicitly.

use crate::error::{Error, Result};

/// The ids the container process runs as, and the home directory for $HOME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0],
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields.get(5).copied().unwrap_or("/"),
            })
        })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 {
                return None;
            }
            let members = fields
                .get(3)
                .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            Some(GroupEntry {
                name: fields[0],
                gid: fields[2].parse().ok()?,
                members,
            })
        })
}

/// Resolves `spec` given the contents of /etc/passwd and /etc/group (empty when absent).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ExecUser> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|entry| entry.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|entry| entry.name == user_part)
                .ok_or_else(|| Error::UnknownId {
                    kind: "user",
                    name: user_part.to_string(),
                    file: "/etc/passwd",
                })?,
        ),
    };
    let (uid, mut gid, name, home) = match (&entry, user_part.parse::<u32>()) {
        (Some(entry), _) => (
            entry.uid,
            entry.gid,
            Some(entry.name),
            entry.home.to_string(),
        ),
        (None, Ok(uid)) => (uid, 0, None, "/".to_string()),
        (None, Err(_)) => unreachable!("a named user was found above"),
    };

    let mut groups = Vec::new();
    match group_part {
        Some(group_spec) if !group_spec.is_empty() => {
            gid = match group_spec.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_entries(group)
                    .find(|entry| entry.name == group_spec)
                    .map(|entry| entry.gid)
                    .ok_or_else(|| Error::UnknownId {
                        kind: "group",
                        name: group_spec.to_string(),
                        file: "/etc/group",
                    })?,
            };
        }
        _ => {
            if let Some(name) = name {
                groups = group_entries(group)
                    .filter(|entry| entry.members.contains(&name) && entry.gid != gid)
                    .map(|entry| entry.gid)
                    .collect();
            }
        }
    }
    groups.insert(0, gid);
    groups.dedup();
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n# comment\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nwheel:x:10:root\n";

    #[test]
    fn empty_user_is_root_with_its_groups() {
        let user = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!(
            user,
            ExecUser {
                uid: 0,
                gid: 0,
                groups: vec![0, 10],
                home: "/root".into()
            }
        );
    }

    #[test]
    fn name_gives_primary_and_supplementary_groups() {
        let user = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(
            user,
            ExecUser {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 2000],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn numeric_uid_absent_from_passwd_is_allowed() {
        let user = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!(
            user,
            ExecUser {
                uid: 4242,
                gid: 0,
                groups: vec![0],
                home: "/".into()
            }
        );
    }

    #[test]
    fn explicit_group_by_name_or_number() {
        assert_eq!(
            resolve("app:extra", PASSWD, GROUP).unwrap().groups,
            vec![2000]
        );
        let user = resolve("1000:77", PASSWD, GROUP).unwrap();
        assert_eq!((user.uid, user.gid, user.groups), (1000, 77, vec![77]));
    }

    #[test]
    fn unknown_names_are_errors_naming_the_file() {
        let err = resolve("ghost", PASSWD, GROUP).unwrap_err().to_string();
        assert_eq!(
            err,
            "unable to find user ghost: no matching entries in /etc/passwd"
        );
        let err = resolve("app:ghosts", PASSWD, GROUP)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unable to find group ghosts: no matching entries in /etc/group"
        );
    }
}
