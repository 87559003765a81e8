//! Programs written for the original C system, unchanged: built with its flags
//! (`-Wall -Wextra -D_GNU_SOURCE`, here with `-Werror`) and its link line (`-ldsm -lpthread -lrt`)
//! against `cargo xtask install` into a temporary prefix, linked with the shared library, and
//! run as its README says (the parent forks, every process calls `dsm_init2`).
//!
//! They rely on facts of the original's API: a named semaphore starts at 1 (a fresh one is a
//! mutex), `dsm/dsm_util.h` exists, one parent may run several sessions of one name in a row,
//! and `dsm_init2` connects to `127.0.0.1:4200` by default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use dsm_tests::programs::{field, install_into, root, run_without, text};
use dsm_tests::{session_name, TestEnv};

/// The temporary prefix of one install for the whole run.
fn prefix() -> &'static Path {
    static PREFIX: OnceLock<tempfile::TempDir> = OnceLock::new();
    PREFIX
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            install_into(dir.path());
            dir
        })
        .path()
}

/// Builds `tests/c/original/<name>.c` against the installed header and shared library with the
/// original's flags and link line (plus an rpath: the temporary prefix is not in the loader's
/// path), and checks the program really uses `libdsm.so`.
fn build(name: &str) -> PathBuf {
    // One build at a time: tests run in parallel and two of them use `mutex`.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let p = prefix();
    let exe = p.join(format!("bin-{name}"));
    if exe.is_file() {
        return exe;
    }
    let out = Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-O2", "-I"])
        .arg(p.join("include"))
        .arg(root().join(format!("tests/c/original/{name}.c")))
        .arg(format!("-L{}", p.join("lib").display()))
        .arg(format!("-Wl,-rpath,{}", p.join("lib").display()))
        .args(["-ldsm", "-lpthread", "-lrt", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc (a C compiler is needed for these tests)");
    assert!(out.status.success(), "cc {name}.c failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let dynamic = Command::new("readelf").arg("-d").arg(&exe).output().expect("run readelf");
    assert!(
        String::from_utf8_lossy(&dynamic.stdout).contains("Shared library: [libdsm.so]"),
        "{name} is not linked with the shared libdsm.so:\n{}",
        String::from_utf8_lossy(&dynamic.stdout)
    );
    exe
}

/// The variables a program needs to reach `env`'s coordinator; no `LD_LIBRARY_PATH`.
fn env_for(env: &TestEnv) -> Vec<(String, String)> {
    vec![
        ("DSM_COORDINATOR".into(), env.addr().to_string()),
        ("DSM_CERT_DIR".into(), env.cert_dir().display().to_string()),
        ("DSM_ATTACH_TIMEOUT".into(), "60s".into()),
    ]
}

/// Inherited values must not help: the program finds libdsm.so by its rpath alone, and its
/// session comes from its own arguments.
const UNSET: [&str; 5] = ["LD_LIBRARY_PATH", "DSM_SESSION", "DSM_NPROCS", "DSM_SIZE", "DSM_COORDINATOR"];

fn run_clean(exe: &Path, args: &[&str], envs: &[(String, String)]) -> Output {
    run_without(exe, args, envs, &UNSET)
}

#[test]
fn a_fresh_semaphore_is_a_mutex_for_4_processes_of_500_guarded_plain_increments() {
    let env = TestEnv::new();
    let exe = build("mutex");
    let o = run_clean(&exe, &["4", "500", &session_name("mutex")], &env_for(&env));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(field(&o, "total").as_deref(), Some("2000"), "{}", text(&o));
}

#[test]
fn semaphore_ping_pong_consumes_the_initial_count_then_alternates() {
    let env = TestEnv::new();
    let exe = build("sem_pingpong");
    let o = run_clean(&exe, &["200", &session_name("sem-pp")], &env_for(&env));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(field(&o, "turn").as_deref(), Some("400"), "{}", text(&o));
    assert_eq!(field(&o, "order_errors").as_deref(), Some("0"), "{}", text(&o));
}

#[test]
fn one_parent_runs_3_sessions_of_one_name_in_a_row_forking_after_dsm_exit() {
    let env = TestEnv::new();
    let exe = build("sessions");
    let o = run_clean(&exe, &["3", "3", &session_name("primes")], &env_for(&env));
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // 3 processes: 1+2+3 = 6, plus 3 * round.
    for (round, sum) in [(0, 6), (1, 9), (2, 12)] {
        assert!(
            stdout.contains(&format!("round {round}: sum={sum} expected={sum}")),
            "round {round}: {}",
            text(&o)
        );
    }
}

#[test]
fn dsm_util_h_gives_wall_time_zalloc_macros_and_panics_that_exit_1() {
    let exe = build("util");
    let o = run_clean(&exe, &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    // dsm_getWallTime is wall-clock seconds: within a second or two of time(NULL).
    let skew: f64 = field(&o, "wall_minus_time").expect("wall_minus_time").parse().expect("a number");
    assert!(skew.abs() <= 2.0, "{}", text(&o));
    assert_eq!(field(&o, "zeroed").as_deref(), Some("1"), "{}", text(&o));
    assert_eq!(field(&o, "max").as_deref(), Some("7"));
    assert_eq!(field(&o, "min").as_deref(), Some("3"));
    assert_eq!(field(&o, "pagesize").as_deref(), Some("4096"));
    assert_eq!(field(&o, "gid_before_init").as_deref(), Some("-1"));

    let o = run_clean(&exe, &["assert"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fatal: Condition unmet (") && err.contains("util.c:") && err.contains("n > 0"), "{}", text(&o));

    let o = run_clean(&exe, &["panicf"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("fatal: bad value 42 in util"), "{}", text(&o));

    let o = run_clean(&exe, &["warning"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: just a warning"), "{}", text(&o));
}

#[test]
fn dsm_init2_without_dsm_coordinator_reaches_127_0_0_1_port_4200() {
    let addr: SocketAddr = "127.0.0.1:4200".parse().unwrap();
    let env = match TestEnv::try_at(addr, dsm_cert::Transport::default()) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("SKIPPED: cannot listen on {addr} for this test ({e:#}); is another coordinator running there?");
            return;
        }
    };
    let exe = build("mutex");
    // run_clean removes DSM_COORDINATOR: only the default can lead there.
    let envs = vec![("DSM_CERT_DIR".to_string(), env.cert_dir().display().to_string())];
    let o = run_clean(&exe, &["2", "10", &session_name("default-port")], &envs);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(field(&o, "total").as_deref(), Some("20"), "{}", text(&o));
}
