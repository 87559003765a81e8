//! The C API (`include/dsm/dsm.h`): the original system's functions, on this runtime.
//!
//! One process-wide [`Region`] lives in a static lock, created by `dsm_init` and dropped by
//! `dsm_exit`. Nothing global is initialized (and no thread exists) before the first `dsm_init`,
//! so the original pattern works: fork N−1 children first, then every process calls `dsm_init`.
//! Do not fork *after* `dsm_init`: the child would not have the runtime thread.
//!
//! Functions that cannot return an error print one line to stderr (`dsm: <function> failed:
//! <what>; <what to check>`) and `exit(1)`, as the original did. The `dsm_try_*` variants return
//! `NULL` / `-1` instead and keep the message for [`dsm_last_error`]. No panic unwinds into C:
//! every entry point catches it and reports it as an error.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use parking_lot::{Mutex, RwLock};

use crate::config::{Config, DEFAULT_PORT};
use crate::error::Error;
use crate::region::Region;

/// `dsm_cfg` of `dsm.h`. Null pointers and zeros mean "from the environment".
#[repr(C)]
#[derive(Debug)]
pub struct DsmCfg {
    /// Number of processes (0: `DSM_NPROCS`, `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`).
    pub nproc: c_uint,
    /// Session name (NULL: `DSM_SESSION`).
    pub sid_name: *const c_char,
    /// Coordinator host or IP (NULL: `DSM_COORDINATOR`, else 127.0.0.1).
    pub d_addr: *const c_char,
    /// Coordinator port as text (NULL: the port of `DSM_COORDINATOR`, else 4200).
    pub d_port: *const c_char,
    /// Region size in bytes, rounded up to pages (0: `DSM_SIZE`).
    pub map_size: usize,
}

/// Initial count of a semaphore created by the C API (the original's server sets `value = 1`).
pub const C_SEMAPHORE_INITIAL: u32 = 1;

/// The attached region of this process (between `dsm_init` and `dsm_exit`). Barriers and
/// semaphores take the read lock, so several threads may block in them at once.
static REGION: RwLock<Option<Region>> = RwLock::new(None);

/// The message of the most recent failure of any `dsm_*` function.
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// A failure of one API call: the message and what to check.
struct Failure {
    what: String,
    hint: &'static str,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let hint = match &e {
            Error::Config(_) => "check the dsm_cfg fields or DSM_COORDINATOR, DSM_SESSION, DSM_SIZE and DSM_NPROCS",
            Error::Certificates(_) | Error::CertificateRejected { .. } | Error::Tls { .. } => {
                "check DSM_CERT_DIR (create certificates with `dsm certs`)"
            }
            Error::Refused(_) => "check that every process passes the same session name, nproc and map_size",
            Error::Version(_) => "use the same DSM version for the coordinator and the programs",
            Error::Unreachable { .. } | Error::AttachTimeout { .. } => "",
            Error::Session(_) | Error::ConnectionLost(_) | Error::CoordinatorShutdown => {
                "another process of the session failed or the coordinator stopped; check their output"
            }
            Error::Name(_) => "check the semaphore or session name",
            _ => "",
        };
        Failure { what: e.to_string(), hint }
    }
}

fn config_failure(what: impl Into<String>) -> Failure {
    Failure { what: what.into(), hint: "check the arguments" }
}

/// Runs `f` without letting a panic cross into C. On failure records the message; if `fatal`,
/// also prints it and exits with status 1.
fn call<T>(function: &str, fatal: bool, failed: T, f: impl FnOnce() -> Result<T, Failure>) -> T {
    let failure = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return v,
        Ok(Err(failure)) => failure,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Failure { what: format!("internal error: {msg}"), hint: "please report this bug" }
        }
    };
    let mut line = format!("{function} failed: {}", failure.what);
    if !failure.hint.is_empty() && !failure.what.contains(failure.hint) {
        line.push_str("; ");
        line.push_str(failure.hint);
    }
    if fatal {
        eprintln!("dsm: {line}");
    }
    *LAST_ERROR.lock() = Some(line);
    if fatal {
        std::process::exit(1);
    }
    failed
}

/// Reads an optional C string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string valid for the call.
unsafe fn opt_str<'a>(p: *const c_char, field: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and the caller guarantees a NUL-terminated string that outlives the call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(Some).map_err(|_| config_failure(format!("{field} is not valid UTF-8")))
}

/// The configuration from `cfg`'s fields, the environment filling the null/zero ones.
fn config_from(
    nproc: c_uint,
    sid: Option<&str>,
    addr: Option<&str>,
    port: Option<&str>,
    map_size: usize,
) -> Result<Config, Failure> {
    let mut b = Config::builder();
    if nproc != 0 {
        b = b.nprocs(nproc);
    }
    if let Some(sid) = sid {
        b = b.session(sid);
    }
    if map_size != 0 {
        b = b.size(map_size as u64);
    }
    if addr.is_some() || port.is_some() {
        let port = match port {
            Some(p) => {
                p.trim().parse::<u16>().map_err(|_| config_failure(format!("d_port '{p}' is not a port number")))?
            }
            None => std::env::var("DSM_COORDINATOR")
                .ok()
                .and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
                .unwrap_or(DEFAULT_PORT),
        };
        let host = match addr {
            Some(h) => h.trim().to_string(),
            None => std::env::var("DSM_COORDINATOR")
                .ok()
                .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
                .unwrap_or_else(|| "127.0.0.1".into()),
        };
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
        b = b.coordinator(format!("{host}:{port}"));
    }
    Ok(b.env_overrides()?.build()?)
}

fn init(config: Result<Config, Failure>) -> Result<*mut c_void, Failure> {
    let config = config?;
    let mut slot = REGION.write();
    if slot.is_some() {
        return Err(Failure {
            what: "this process already attached a session".into(),
            hint: "call dsm_exit before calling dsm_init again",
        });
    }
    let region = Region::attach(&config)?;
    let ptr = region.as_ptr().cast::<c_void>();
    *slot = Some(region);
    Ok(ptr)
}

/// # Safety
/// `cfg` is null or points to a valid `dsm_cfg` whose strings are null or NUL-terminated.
unsafe fn init_cfg(cfg: *const DsmCfg) -> Result<*mut c_void, Failure> {
    if cfg.is_null() {
        return init(config_from(0, None, None, None, 0));
    }
    // SAFETY: non-null; the caller guarantees it points to a valid dsm_cfg.
    let cfg = unsafe { &*cfg };
    // SAFETY: the caller guarantees the string fields are null or NUL-terminated strings.
    let (sid, addr, port) = unsafe {
        (opt_str(cfg.sid_name, "sid_name")?, opt_str(cfg.d_addr, "d_addr")?, opt_str(cfg.d_port, "d_port")?)
    };
    init(config_from(cfg.nproc, sid, addr, port, cfg.map_size))
}

/// # Safety
/// `sid` is null or a NUL-terminated string.
unsafe fn init2(sid: *const c_char, nproc: c_uint, map_size: usize) -> Result<*mut c_void, Failure> {
    // SAFETY: forwarded from the caller.
    let sid = unsafe { opt_str(sid, "sid")? };
    init(config_from(nproc, sid, None, None, map_size))
}

fn with_region<T>(f: impl FnOnce(&Region) -> crate::Result<T>) -> Result<T, Failure> {
    let guard = REGION.read();
    let region = guard.as_ref().ok_or_else(|| Failure {
        what: "no session is attached".into(),
        hint: "call dsm_init first",
    })?;
    Ok(f(region)?)
}

/// # Safety
/// `name` is null or a NUL-terminated string.
unsafe fn sem(name: *const c_char, post: bool) -> Result<(), Failure> {
    // SAFETY: forwarded from the caller.
    let name = unsafe { opt_str(name, "semaphore name")? }
        .ok_or_else(|| config_failure("the semaphore name is NULL"))?;
    with_region(|r| {
        // As in the original system, a semaphore is created with count 1 on first use: a fresh
        // one is a mutex, and programs written for it rely on that.
        let s = r.semaphore_with_count(name, C_SEMAPHORE_INITIAL)?;
        if post {
            s.post()
        } else {
            s.wait()
        }
    })
}

fn exit_session() -> Result<(), Failure> {
    let region = REGION.write().take().ok_or_else(|| Failure {
        what: "no session is attached".into(),
        hint: "call dsm_init first (and dsm_exit only once)",
    })?;
    Ok(region.detach()?)
}

/// Attaches session `cfg->sid_name` of `cfg->nproc` processes and `cfg->map_size` bytes at the
/// coordinator `cfg->d_addr:cfg->d_port`; returns the shared map once every process joined.
/// Prints the error and exits with status 1 on failure.
///
/// # Safety
/// `cfg` is null or points to a valid `dsm_cfg` whose strings are null or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dsm_init(cfg: *const DsmCfg) -> *mut c_void {
    // SAFETY: forwarded from the caller.
    call("dsm_init", true, std::ptr::null_mut(), || unsafe { init_cfg(cfg) })
}

/// [`dsm_init`] returning NULL on failure (see [`dsm_last_error`]).
///
/// # Safety
/// As [`dsm_init`].
#[no_mangle]
pub unsafe extern "C" fn dsm_try_init(cfg: *const DsmCfg) -> *mut c_void {
    // SAFETY: forwarded from the caller.
    call("dsm_init", false, std::ptr::null_mut(), || unsafe { init_cfg(cfg) })
}

/// [`dsm_init`] at the default coordinator (`DSM_COORDINATOR`, else `127.0.0.1:4200`).
///
/// # Safety
/// `sid` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dsm_init2(sid: *const c_char, nproc: c_uint, map_size: usize) -> *mut c_void {
    // SAFETY: forwarded from the caller.
    call("dsm_init2", true, std::ptr::null_mut(), || unsafe { init2(sid, nproc, map_size) })
}

/// [`dsm_init2`] returning NULL on failure.
///
/// # Safety
/// `sid` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dsm_try_init2(sid: *const c_char, nproc: c_uint, map_size: usize) -> *mut c_void {
    // SAFETY: forwarded from the caller.
    call("dsm_init2", false, std::ptr::null_mut(), || unsafe { init2(sid, nproc, map_size) })
}

/// This process's global id, `0..nproc` (attach order); -1 if no session is attached.
#[no_mangle]
pub extern "C" fn dsm_get_gid() -> c_int {
    call("dsm_get_gid", false, -1, || with_region(|r| Ok(r.rank() as c_int)))
}

/// Number of processes of the session; 0 if no session is attached.
#[no_mangle]
pub extern "C" fn dsm_get_nproc() -> c_uint {
    call("dsm_get_nproc", false, 0, || with_region(|r| Ok(r.nprocs())))
}

/// Size of the shared map in bytes; 0 if no session is attached.
#[no_mangle]
pub extern "C" fn dsm_get_map_size() -> usize {
    call("dsm_get_map_size", false, 0, || with_region(|r| Ok(r.len())))
}

/// Blocks until every process of the session reached a barrier. Exits on failure.
#[no_mangle]
pub extern "C" fn dsm_barrier() {
    call("dsm_barrier", true, (), || with_region(Region::barrier))
}

/// [`dsm_barrier`] returning -1 on failure, 0 on success.
#[no_mangle]
pub extern "C" fn dsm_try_barrier() -> c_int {
    call("dsm_barrier", false, -1, || with_region(Region::barrier).map(|()| 0))
}

/// Increments the named semaphore (created at 1 on first use). Exits on failure.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dsm_post_sem(name: *const c_char) {
    // SAFETY: forwarded from the caller.
    call("dsm_post_sem", true, (), || unsafe { sem(name, true) })
}

/// [`dsm_post_sem`] returning -1 on failure, 0 on success.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dsm_try_post_sem(name: *const c_char) -> c_int {
    // SAFETY: forwarded from the caller.
    call("dsm_post_sem", false, -1, || unsafe { sem(name, true) }.map(|()| 0))
}

/// Decrements the named semaphore (created at 1 on first use: a fresh one is a mutex),
/// blocking while it is zero. Exits on failure.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dsm_wait_sem(name: *const c_char) {
    // SAFETY: forwarded from the caller.
    call("dsm_wait_sem", true, (), || unsafe { sem(name, false) })
}

/// [`dsm_wait_sem`] returning -1 on failure, 0 on success.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dsm_try_wait_sem(name: *const c_char) -> c_int {
    // SAFETY: forwarded from the caller.
    call("dsm_wait_sem", false, -1, || unsafe { sem(name, false) }.map(|()| 0))
}

/// Writes back owned pages, leaves the session and unmaps the shared map. Exits on failure.
#[no_mangle]
pub extern "C" fn dsm_exit() {
    call("dsm_exit", true, (), exit_session)
}

/// [`dsm_exit`] returning -1 on failure, 0 on success.
#[no_mangle]
pub extern "C" fn dsm_try_exit() -> c_int {
    call("dsm_exit", false, -1, || exit_session().map(|()| 0))
}

/// Copies the message of the most recent failure into `buf` (at most `len - 1` bytes and a NUL,
/// like `snprintf`) and returns its full length; 0 (and an empty string) if nothing failed yet.
/// `buf` may be NULL when `len` is 0, to ask for the length.
///
/// # Safety
/// `buf` is valid for `len` bytes of writes, or `len` is 0.
#[no_mangle]
pub unsafe extern "C" fn dsm_last_error(buf: *mut c_char, len: usize) -> c_int {
    let guard = LAST_ERROR.lock();
    let msg = guard.as_deref().unwrap_or("").as_bytes();
    if !buf.is_null() && len > 0 {
        let n = msg.len().min(len - 1);
        // SAFETY: the caller guarantees `buf` holds `len` bytes; we write n + 1 <= len bytes, and
        // `msg` is our own string, which cannot overlap the caller's buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    c_int::try_from(msg.len()).unwrap_or(c_int::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_fields() {
        let c = config_from(2, Some("s"), Some("10.0.0.1"), Some("5000"), 4096).unwrap_or_else(|f| panic!("{}", f.what));
        assert_eq!(c.coordinator(), "10.0.0.1:5000");
        assert_eq!(c.nprocs(), 2);
        let c = config_from(2, Some("s"), Some("::1"), Some("5000"), 1).unwrap_or_else(|f| panic!("{}", f.what));
        assert_eq!(c.coordinator(), "[::1]:5000");
        assert_eq!(c.size(), 4096);
        let Err(e) = config_from(2, Some("s"), Some("h"), Some("port"), 1) else { panic!("bad port accepted") };
        assert!(e.what.contains("d_port"), "{}", e.what);
    }

    #[test]
    fn calls_without_a_session_fail_cleanly() {
        assert_eq!(dsm_get_gid(), -1);
        assert_eq!(dsm_try_barrier(), -1);
        let mut buf = [0 as c_char; 8];
        // SAFETY: buf holds 8 bytes.
        let n = unsafe { dsm_last_error(buf.as_mut_ptr(), buf.len()) };
        assert!(n > 8);
        // SAFETY: dsm_last_error NUL-terminated it.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_bytes().len(), 7);
    }
}
