//! FUSE over io_uring, for real (root, /dev/fuse, `enable_uring=Y`): a handler that keeps
//! its reply object and answers later from another thread is answered through the ring
//! entry its request came on, with its own bytes, while other requests go on.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen,
    Request, Session, SessionACL,
};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";
const LATE: u64 = 2;
const NOW: u64 = 3;
/// How long a late handler holds its reply before answering.
const DELAY: Duration = Duration::from_millis(30);

/// Two files: `late`, whose reads are answered from a new thread after DELAY, and `now`,
/// answered at once. A read's bytes name the file and the offset, so mixed-up replies show.
struct LateFs {
    /// Each read's file and the name of the thread that took it.
    served_by: Served,
}

type Served = Arc<Mutex<Vec<(u64, String)>>>;

fn contents(ino: u64, offset: u64, size: u32) -> Vec<u8> {
    let tag = format!("{ino}@{offset};");
    tag.bytes().cycle().take(size as usize).collect()
}

fn attr(ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: if ino == 1 { 0 } else { 1 << 20 },
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if ino == 1 {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: 0o755,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for LateFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING)
        {
            let _ = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match name.to_str() {
            Some("late") if parent.0 == 1 => LATE,
            Some("now") if parent.0 == 1 => NOW,
            _ => return reply.error(Errno::ENOENT),
        };
        // No caching: every stat comes to the server.
        reply.entry(&Duration::ZERO, &attr(ino), Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&Duration::ZERO, &attr(ino.0));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Direct I/O: every read is a READ request, none comes from the page cache.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let name = thread::current().name().unwrap_or("?").to_string();
        self.served_by.lock().unwrap().push((ino.0, name));
        let data = contents(ino.0, offset, size);
        if ino.0 == LATE {
            thread::spawn(move || {
                thread::sleep(DELAY);
                reply.data(&data);
            });
        } else {
            reply.data(&data);
        }
    }
}

/// Runs `f` on a thread; a hang fails the test (after a lazy unmount of `mnt`) instead of
/// hanging the run.
fn within<T: Send + 'static>(mnt: &Path, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => {
            let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
            panic!("{what} did not finish within 60 s");
        }
    }
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = fs::File::open(path).unwrap();
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn late_replies_from_other_threads_are_answered_over_the_ring() {
    let enabled = fs::read_to_string(ENABLE_URING).unwrap_or_else(|_| {
        panic!("{ENABLE_URING} is missing: FUSE over io_uring needs Linux 6.14+")
    });
    assert_eq!(
        enabled.trim(),
        "Y",
        "FUSE over io_uring is off (fix: echo Y > {ENABLE_URING})"
    );
    let dir = tempfile::tempdir().unwrap();
    let mnt: PathBuf = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let served_by = Served::default();
    let fs = LateFs {
        served_by: served_by.clone(),
    };
    let mut config = Config::default();
    config.acl = SessionACL::All;
    let session = Session::new(fs, &mnt, &config).expect("mount (needs root and /dev/fuse)");
    assert!(
        session.io_uring(),
        "the kernel did not take FUSE over io_uring"
    );
    let background = session.spawn().unwrap();

    // Requests come through /dev/fuse until every queue has an entry: wait for the ring.
    let (late, now) = (mnt.join("late"), mnt.join("now"));
    let on_ring = |name: &str| name.starts_with("fuser-uring-");
    let start = Instant::now();
    loop {
        let probe = now.clone();
        within(&mnt, "a read", move || read_at(&probe, 0, 16));
        if served_by
            .lock()
            .unwrap()
            .last()
            .is_some_and(|(_, name)| on_ring(name))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no read reached a ring thread"
        );
        thread::sleep(Duration::from_millis(10));
    }
    served_by.lock().unwrap().clear();

    // Concurrent late reads, each at its own offset, beside immediate ones; more of them
    // than there are ring entries, so late requests wait for entries held by others.
    const READERS: u64 = 8;
    const ROUNDS: u64 = 5;
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let (late, now) = (late.clone(), now.clone());
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    let offset = (i * ROUNDS + round) * 4096;
                    assert_eq!(read_at(&late, offset, 4096), contents(LATE, offset, 4096));
                    assert_eq!(read_at(&now, offset, 100), contents(NOW, offset, 100));
                }
            })
        })
        .collect();
    within(&mnt, "concurrent late and immediate reads", move || {
        for reader in readers {
            reader.join().unwrap();
        }
    });
    let served = served_by.lock().unwrap().clone();
    let late_reads = served.iter().filter(|(ino, _)| *ino == LATE).count();
    assert_eq!(late_reads as u64, READERS * ROUNDS, "{served:?}");
    let off_ring: Vec<_> = served.iter().filter(|(_, name)| !on_ring(name)).collect();
    assert!(
        off_ring.is_empty(),
        "reads not served over the ring: {off_ring:?}"
    );
    drop(background);
}
