//! Property tests of the layer format: random trees survive the round trip and give the
//! same bytes twice; random damage to a layer never panics the unpacker and never writes
//! outside its target. Case counts are small to keep CI fast; raise them with
//! `PROPTEST_CASES=1000`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;
use rustix::fs::FileType;
use strata_store::layer::{Compression, WriteOptions, unpack_layer, write_layer};

use super::support::*;

#[derive(Clone, Debug)]
enum Node {
    File { size: usize, seed: u8 },
    Dir,
    Symlink(String),
    HardLink(usize),
    Fifo,
    Whiteout,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[a-zA-Z0-9 ._~-]{1,12}",
        "[ä-ü€]{1,4}",
        Just("x".repeat(150)),
    ]
    .prop_filter("not . or ..", |n| {
        n != "." && n != ".." && !n.starts_with(".wh.")
    })
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => (0usize..20_000, any::<u8>()).prop_map(|(size, seed)| Node::File { size, seed }),
        3 => Just(Node::Dir),
        1 => "[a-z./]{1,20}".prop_map(Node::Symlink),
        1 => (0usize..64).prop_map(Node::HardLink),
        1 => Just(Node::Fifo),
        1 => Just(Node::Whiteout),
    ]
}

/// (parent index among earlier directories, name, node, mode, uid, mtime)
type Spec = Vec<(usize, String, Node, u32, u32, i64)>;

fn spec() -> impl Strategy<Value = Spec> {
    prop::collection::vec(
        (
            0usize..64,
            name(),
            node(),
            0u32..0o7777,
            0u32..70_000,
            0i64..2_000_000_000,
        ),
        1..40,
    )
}

/// Builds the tree; entries whose name is taken are skipped. `reversed` creates the same
/// tree in another order (other inode numbers, other first hard link).
fn build(root: &Path, spec: &Spec) {
    fs::create_dir_all(root).unwrap();
    let mut dirs = vec![root.to_path_buf()];
    let mut files = Vec::new();
    let mut made = Vec::new();
    for (parent, name, node, mode, uid, mtime) in spec {
        let path = dirs[parent % dirs.len()].join(name);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match node {
            Node::File { size, seed } => {
                let data: Vec<u8> = (0..*size).map(|i| (i as u8).wrapping_mul(*seed)).collect();
                fs::write(&path, data).unwrap();
                files.push(path.clone());
            }
            Node::Dir => {
                fs::create_dir(&path).unwrap();
                dirs.push(path.clone());
            }
            Node::Symlink(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
            Node::HardLink(index) if !files.is_empty() => {
                fs::hard_link(&files[index % files.len()], &path).unwrap();
                continue; // the inode keeps the first name's metadata
            }
            Node::HardLink(_) => continue,
            Node::Fifo => mknod(&path, FileType::Fifo, 0o644, 0),
            Node::Whiteout => mknod(&path, FileType::CharacterDevice, 0, 0),
        }
        made.push((path, node.clone(), *mode, *uid, *mtime));
    }
    for (path, node, mode, uid, mtime) in made.iter().rev() {
        chown(path, *uid, uid / 2);
        if !matches!(node, Node::Symlink(_)) {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).unwrap();
        }
        set_mtime(path, *mtime);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip_and_are_deterministic(spec in spec()) {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        build(&src, &spec);
        let opts = WriteOptions::default();
        let mut blob = Vec::new();
        let info = write_layer(&src, &opts, &mut blob).unwrap();
        let again = write_layer(&src, &opts, std::io::sink()).unwrap();
        prop_assert_eq!(&info, &again);
        let dst = tmp.path().join("dst");
        fs::create_dir(&dst).unwrap();
        prop_assert_eq!(unpack_layer(&blob[..], &dst).unwrap(), info.diff_id);
        assert_trees_equal(&src, &dst);
    }

    #[test]
    fn damaged_layers_never_panic_or_escape(
        spec in spec(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        compression in prop_oneof![Just(Compression::None), Just(Compression::Zstd)],
    ) {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        build(&src, &spec);
        let mut blob = Vec::new();
        write_layer(&src, &WriteOptions { compression, ..Default::default() }, &mut blob).unwrap();
        for (at, byte) in damage {
            let i = at.index(blob.len());
            blob[i] = byte;
        }
        let sandbox = tmp.path().join("sandbox");
        let target = sandbox.join("target");
        fs::create_dir_all(&target).unwrap();
        fs::write(sandbox.join("sentinel"), "untouched").unwrap();
        let _ = unpack_layer(&blob[..], &target); // Ok or Err: both fine, a panic is not
        let mut outside: Vec<_> = fs::read_dir(&sandbox).unwrap().map(|e| e.unwrap().file_name()).collect();
        outside.sort();
        prop_assert_eq!(outside, ["sentinel", "target"]);
        prop_assert_eq!(fs::read_to_string(sandbox.join("sentinel")).unwrap(), "untouched");
    }
}
