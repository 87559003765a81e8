//! The one way the runtime stops a process: when the shared region can no longer be served
//! (the coordinator is gone, it broke the protocol, an ioctl failed, the runtime thread
//! panicked), threads parked in page faults could never be woken, and a thread spinning on a
//! read-only copy would read stale data forever. The process then prints one line and exits with
//! status 1 — what the original system did on any failure.
//!
//! The path never panics and never blocks: the message goes to stderr with one `write(2)` whose
//! errors are ignored (stderr may be a closed pipe, e.g. after `dsm run` was killed), then
//! `_exit(2)` — not `exit(3)`: atexit handlers or stdio flushes could touch the region or take a
//! lock a parked thread holds, and the thread running this is the one that would have to serve
//! that fault.

/// Prints `dsm: fatal: <what>: <detail>; ...` to stderr and ends the process with status 1.
pub fn fatal(what: &str, detail: &dyn std::fmt::Display) -> ! {
    let line = format!(
        "dsm: fatal: {what}: {detail}; the shared region can no longer be kept coherent, exiting\n"
    );
    write_stderr(line.as_bytes());
    crate::sys::exit_now(1)
}

/// Writes `bytes` to stderr, ignoring every error (a closed pipe, a full disk).
pub fn write_stderr(bytes: &[u8]) {
    crate::sys::write_fd(2, bytes);
}
