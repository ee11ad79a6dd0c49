//! `docker diff`-style change lists over real upper and lower dirs.

use std::fs;
use std::path::PathBuf;

use strata_store::diff::{Change, ChangeKind, image_changes, upper_changes};

use super::fixtures::{image_of, make_tree, opaque, scratch, store, whiteout};

fn listed(changes: &[Change]) -> Vec<String> {
    changes.iter().map(ToString::to_string).collect()
}

#[test]
fn added_changed_and_deleted_paths_with_parents_as_changed() {
    let lower = scratch();
    make_tree(lower.path());
    let upper = scratch();
    let u = upper.path();
    fs::create_dir_all(u.join("etc")).unwrap();
    fs::write(u.join("etc/motd"), "edited\n").unwrap();
    fs::write(u.join("etc/new.conf"), "x=1\n").unwrap();
    whiteout(&u.join("etc/hostname"));
    fs::create_dir_all(u.join("srv/www")).unwrap();
    fs::write(u.join("srv/www/index.html"), "hi").unwrap();
    whiteout(&u.join("bin"));

    let changes = upper_changes(u, &[lower.path().to_path_buf()]).unwrap();
    assert_eq!(
        listed(&changes),
        [
            "D /bin",
            "C /etc",
            "D /etc/hostname",
            "C /etc/motd",
            "A /etc/new.conf",
            "A /srv",
            "A /srv/www",
            "A /srv/www/index.html"
        ]
    );
}

#[test]
fn opaque_dir_deletes_what_its_lowers_held() {
    let lower = scratch();
    make_tree(lower.path());
    let upper = scratch();
    let u = upper.path();
    fs::create_dir(u.join("etc")).unwrap();
    opaque(&u.join("etc"));
    fs::write(u.join("etc/motd"), "only this\n").unwrap();

    let changes = upper_changes(u, &[lower.path().to_path_buf()]).unwrap();
    assert_eq!(
        listed(&changes),
        ["C /etc", "D /etc/hostname", "C /etc/motd"]
    );
}

#[test]
fn lowers_are_merged_top_first_with_their_own_whiteouts() {
    let bottom = scratch();
    make_tree(bottom.path());
    let middle = scratch();
    fs::create_dir(middle.path().join("etc")).unwrap();
    whiteout(&middle.path().join("etc/motd"));
    let upper = scratch();
    fs::create_dir(upper.path().join("etc")).unwrap();
    fs::write(upper.path().join("etc/motd"), "back again\n").unwrap();

    let lowers: Vec<PathBuf> = vec![middle.path().to_path_buf(), bottom.path().to_path_buf()];
    let changes = upper_changes(upper.path(), &lowers).unwrap();
    // the middle layer deleted /etc/motd, so the upper adds it back
    assert_eq!(listed(&changes), ["C /etc", "A /etc/motd"]);
    assert_eq!(changes[1].kind, ChangeKind::Added);
}

#[test]
fn image_changes_compare_merged_trees() {
    let base = scratch();
    make_tree(base.path());
    let top = scratch();
    fs::create_dir(top.path().join("etc")).unwrap();
    fs::write(
        top.path().join("etc/motd"),
        "new motd, longer than before\n",
    )
    .unwrap();
    whiteout(&top.path().join("etc/hostname"));
    fs::create_dir_all(top.path().join("opt/app")).unwrap();
    fs::write(top.path().join("opt/app/run"), "run").unwrap();
    fs::create_dir(top.path().join("var")).unwrap();
    opaque(&top.path().join("var"));

    let (_dir, store) = store();
    let a = image_of(&store, &[base.path()], "a");
    let b = image_of(&store, &[base.path(), top.path()], "b");
    let changes = image_changes(&store, &a, &b).unwrap();
    assert_eq!(
        listed(&changes),
        [
            "C /etc",
            "D /etc/hostname",
            "C /etc/motd",
            "A /opt",
            "A /opt/app",
            "A /opt/app/run",
            "C /var",
            "D /var/lib"
        ]
    );
    assert!(image_changes(&store, &a, &a).unwrap().is_empty());
}

/// Unmounts on drop, so a failing assertion never leaves a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The upper dir the kernel's overlayfs writes is read the way docker would list it.
#[test]
fn kernel_overlay_upper_lists_like_docker() {
    let lower = scratch();
    make_tree(lower.path());
    let area = scratch();
    let (upper, work, merged) = (
        area.path().join("upper"),
        area.path().join("work"),
        area.path().join("merged"),
    );
    for dir in [&upper, &work, &merged] {
        fs::create_dir(dir).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.path().display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .expect("mount overlayfs (tests run as root; fix: modprobe overlay)");
    let guard = Mounted(merged.clone());

    fs::write(merged.join("etc/motd"), "edited\n").unwrap();
    fs::remove_file(merged.join("etc/hostname")).unwrap();
    fs::create_dir(merged.join("srv")).unwrap();
    fs::write(merged.join("srv/a"), "a").unwrap();
    fs::remove_dir_all(merged.join("var/lib")).unwrap();
    fs::create_dir(merged.join("var/lib")).unwrap();
    fs::write(merged.join("var/lib/new"), "n").unwrap();
    fs::remove_file(merged.join("bin/alias")).unwrap();
    drop(guard);

    let changes = upper_changes(&upper, &[lower.path().to_path_buf()]).unwrap();
    assert_eq!(
        listed(&changes),
        [
            "C /bin",
            "D /bin/alias",
            "C /etc",
            "D /etc/hostname",
            "C /etc/motd",
            "A /srv",
            "A /srv/a",
            "C /var",
            "C /var/lib",
            "D /var/lib/app",
            "A /var/lib/new"
        ]
    );
}
