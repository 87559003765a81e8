//! Whether a thread that faulted is inside a system call (a kernel-mode fault: the kernel is
//! the writer, and a signal would make its system call fail, so such a store goes by
//! ownership instead of replay).
//!
//! `/proc/self/task/TID/syscall` starts with the syscall number, `-1` for a thread blocked
//! outside any system call (a user-mode fault), or `running`. Opening it on every replayed
//! store cost ~9 µs of the replay path (`replay.store.hop.syscall_test`), reading a kept file
//! 3-5 µs: the file of each thread is opened once and read again from offset 0 (procfs
//! regenerates it on every read from the start).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Open files kept at most; past this the cache starts over (threads come and go).
const MAX_OPEN: usize = 1024;

/// Per-thread `/proc/self/task/TID/syscall` files, opened on first use.
#[derive(Default)]
pub(super) struct SyscallProbe {
    files: HashMap<i32, File>,
}

impl SyscallProbe {
    /// Whether thread `tid` is inside a system call. True when it cannot be told (the caller
    /// then takes the safe path).
    pub fn in_syscall(&mut self, tid: i32) -> bool {
        let mut buf = [0u8; 8];
        if let Some(file) = self.files.get(&tid) {
            // A thread that ended (its number perhaps reused since) reads as an error: open
            // the current thread of that number below.
            if let Ok(n) = file.read_at(&mut buf, 0) {
                return verdict(&buf[..n]);
            }
            self.files.remove(&tid);
        }
        let Ok(file) = File::open(format!("/proc/self/task/{tid}/syscall")) else { return true };
        let Ok(n) = file.read_at(&mut buf, 0) else { return true };
        if self.files.len() >= MAX_OPEN {
            self.files.clear();
        }
        self.files.insert(tid, file);
        verdict(&buf[..n])
    }
}

/// A user-mode fault reads `-1 ...`; anything else (a syscall number, `running`) is not one.
fn verdict(head: &[u8]) -> bool {
    !head.starts_with(b"-1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_running_here_is_not_blocked_outside_a_system_call() {
        // This thread is running while it reads its own file: "running", not "-1".
        let tid = nix::unistd::gettid().as_raw();
        let mut probe = SyscallProbe::default();
        assert!(probe.in_syscall(tid));
        assert!(probe.in_syscall(tid), "the second read, from the kept file, agrees");
        assert_eq!(probe.files.len(), 1);
    }

    #[test]
    fn a_thread_sleeping_in_a_system_call_reads_as_inside_one_and_an_ended_thread_as_unknown() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = stop_rx.recv(); // blocks in futex
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut probe = SyscallProbe::default();
        assert!(probe.in_syscall(tid));
        stop_tx.send(()).unwrap();
        t.join().unwrap();
        // The kept file now reads as an error and the reopen fails: still "inside" (safe path),
        // and the dead thread's file is dropped.
        assert!(probe.in_syscall(tid));
        assert!(probe.files.is_empty());
    }

    #[test]
    fn a_kept_file_read_again_shows_the_threads_state_now() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let spin = Arc::new(AtomicBool::new(true));
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let s = Arc::clone(&spin);
        let t = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            go_rx.recv().unwrap(); // blocked in futex: a syscall number
            while s.load(Ordering::Relaxed) {
                std::hint::spin_loop(); // running
            }
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut probe = SyscallProbe::default();
        assert!(probe.in_syscall(tid));
        let read = |probe: &SyscallProbe| {
            let mut buf = [0u8; 16];
            let n = probe.files[&tid].read_at(&mut buf, 0).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        assert!(read(&probe).starts_with("202 "), "blocked in futex: {:?}", read(&probe));
        go_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !read(&probe).starts_with("running") {
            assert!(std::time::Instant::now() < deadline, "the kept file still reads {:?}", read(&probe));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        spin.store(false, Ordering::Relaxed);
        t.join().unwrap();
    }

    #[test]
    fn only_minus_one_means_a_user_mode_fault() {
        assert!(!verdict(b"-1 0x7ff"));
        assert!(verdict(b"202 0x1"));
        assert!(verdict(b"running"));
        assert!(verdict(b""));
    }
}
