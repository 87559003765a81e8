//! The C API (`dsm.h` + `libdsm.a`, built with the system C compiler), the `dsm run` launcher and
//! `cargo xtask install`, with real processes.
//!
//! The artifacts these tests need (`libdsm.a`, the `dsm` launcher, the Rust examples) are built
//! once per run with `cargo build --profile <this test's profile>`, so `cargo test -p dsm-tests
//! --test capi` works on its own.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dsm_tests::programs::{artifacts, c_program, field, finish, install_into, profile, root, run, text, TIMEOUT};
use dsm_tests::{session_name, TestEnv};

/// Environment of a C process of `session` at `env`'s coordinator.
fn c_env(env: &TestEnv, session: &str, nprocs: u32) -> Vec<(String, String)> {
    env.worker_env(env.addr(), session, 4096, nprocs)
}

fn assert_correct(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
    assert_eq!(field(o, "correct").as_deref(), Some("true"), "{}", text(o));
}

#[test]
fn c_pi_with_2_and_4_forked_processes_is_within_1e6() {
    let env = TestEnv::new();
    let pi = c_program("examples/c/pi.c");
    for n in [2u32, 4] {
        let o = run(&pi, &["-n", &n.to_string()], &c_env(&env, &session_name("c-pi"), n));
        assert_correct(&o);
        let value: f64 = field(&o, "pi").expect("pi=").parse().expect("a number");
        assert!((value - std::f64::consts::PI).abs() < 1e-6, "{}", text(&o));
        assert_eq!(field(&o, "nprocs").as_deref(), Some(n.to_string().as_str()));
    }
}

#[test]
fn c_pingpong_busy_wait_and_semaphores_with_2_and_4_processes() {
    let env = TestEnv::new();
    let pp = c_program("examples/c/pingpong.c");
    for n in [2u32, 4] {
        for mode in [None, Some("-S")] {
            let mut args = vec!["-n".to_string(), n.to_string(), "-r".into(), "300".into()];
            args.extend(mode.map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = run(&pp, &args, &c_env(&env, &session_name("c-pp"), n));
            assert_correct(&o);
            assert_eq!(field(&o, "turn").as_deref(), Some("300"), "{}", text(&o));
        }
    }
}

#[test]
fn c_contrast_with_2_and_4_processes_equals_the_single_process_result() {
    let env = TestEnv::new();
    let contrast = c_program("examples/c/contrast.c");
    let tmp = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for n in [1u32, 2, 4] {
        let out = tmp.path().join(format!("out-{n}.pgm"));
        let args = ["-n", &n.to_string(), "-g", "320x240", "-o", out.to_str().unwrap()];
        let o = run(&contrast, &args, &c_env(&env, &session_name("c-contrast"), n));
        assert_correct(&o);
        assert_eq!(field(&o, "differing_pixels").as_deref(), Some("0"), "{}", text(&o));
        images.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(images[0].len(), 15 + 320 * 240);
    assert!(images[1] == images[0] && images[2] == images[0], "multi-process output differs from 1 process");
}

fn dsm_run(args: &[&str], cert_dir: &Path) -> Output {
    let child = Command::new(artifacts().join("dsm"))
        .arg("run")
        .args(["--cert-dir"])
        .arg(cert_dir)
        .args(args)
        .env_remove("DSM_COORDINATOR")
        .env_remove("DSM_CERT_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsm run");
    finish(child, TIMEOUT)
}

#[test]
fn dsm_run_starts_4_processes_of_a_rust_and_a_c_example() {
    let env = TestEnv::new();
    // Rust example, with the launcher's private coordinator.
    let pi = artifacts().join("pi");
    let o = dsm_run(&["-n", "4", "--size", "4KiB", "--", pi.to_str().unwrap(), "--steps", "1000000"], env.cert_dir());
    assert_correct(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.lines().all(|l| ["[0] ", "[1] ", "[2] ", "[3] "].iter().any(|p| l.starts_with(p))), "{}", text(&o));
    assert!(stdout.contains("nprocs=4"), "{}", text(&o));

    // C example (one process per launch: no -n), at an existing coordinator.
    let c_pi = c_program("examples/c/pi.c");
    let addr = env.addr().to_string();
    let session = session_name("run-c");
    let o = dsm_run(
        &["-n", "4", "--coordinator", &addr, "--session", &session, "--", c_pi.to_str().unwrap()],
        env.cert_dir(),
    );
    assert_correct(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nprocs=4"), "{}", text(&o));
}

#[test]
fn dsm_run_reports_a_failing_rank_stops_the_others_and_exits_non_zero() {
    let env = TestEnv::new();
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("rank2-fails.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"up $DSM_RANK of $DSM_NPROCS in $DSM_SESSION\"\nif [ \"$DSM_RANK\" = 2 ]; then exit 3; fi\nexec sleep 60\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let start = Instant::now();
    let o = dsm_run(&["-n", "4", "--grace", "1s", "--", script.to_str().unwrap()], env.cert_dir());
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    // Nothing attached (the script is no DSM program): named by launch index, saying why no rank.
    assert!(stderr.contains("dsm run: process at launch index 2 (pid ") && stderr.contains("exited with status 3"), "{}", text(&o));
    assert!(start.elapsed() < Duration::from_secs(30), "the sleeping processes were not stopped: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("[2] up 2 of 4"), "{}", text(&o));
}

/// Starts two processes of one 2-process session with different map sizes: whichever attaches
/// second is refused; returns its output (the first one is killed).
fn mismatched(exe: &Path, args: [&[&str]; 2], env: &TestEnv) -> Output {
    let envs = c_env(env, &session_name("mismatch"), 2);
    let mut children: Vec<Option<Child>> = args
        .iter()
        .map(|a| {
            Some(
                Command::new(exe)
                    .args(*a)
                    .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start"),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let exited = children.iter_mut().position(|c| c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_)))));
        if let Some(i) = exited {
            break children[i].take().unwrap();
        }
        assert!(Instant::now() < deadline, "neither process was refused");
        std::thread::sleep(Duration::from_millis(10));
    };
    for mut c in children.into_iter().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
    finish(refused, TIMEOUT)
}

#[test]
fn a_mismatched_map_size_gives_a_clear_error_from_dsm_init_and_dsm_last_error() {
    let env = TestEnv::new();
    // dsm_init: one line on stderr, exit status 1.
    let pi = c_program("examples/c/pi.c");
    let o = mismatched(&pi, [&["-m", "4096"], &["-m", "8192"]], &env);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", text(&o));
    assert!(lines[0].starts_with("dsm: dsm_init failed: attach refused: session '"), "{}", text(&o));
    assert!(lines[0].contains("declared with a region of") && lines[0].contains("every process"), "{}", text(&o));

    // dsm_try_init2 + dsm_last_error: the program handles the error itself.
    let try_init = c_program("tests/c/try_init.c");
    let o = mismatched(&try_init, [&["4096"], &["8192"]], &env);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("error: dsm_init2 failed: attach refused:") && stdout.contains("declared with a region of"), "{}", text(&o));
    assert!(o.stderr.is_empty(), "the try variant must not print: {}", text(&o));
}

#[test]
fn install_and_uninstall_into_a_temporary_prefix_touch_exactly_the_listed_files() {
    let prefix = tempfile::tempdir().unwrap();
    let files = |dir: &Path| {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    };
    // The profile and target dir of `artifacts()`: already built, so nothing is rebuilt.
    install_into(prefix.path());
    let mut expected = vec![
        "bin/dsm",
        "bin/dsm-coordinator",
        "include/dsm/dsm.h",
        "include/dsm/dsm_util.h",
        "lib/libdsm.a",
        "lib/libdsm.so",
        "lib/pkgconfig/dsm.pc",
    ];
    expected.sort();
    assert_eq!(files(prefix.path()), expected);
    let pc = std::fs::read_to_string(prefix.path().join("lib/pkgconfig/dsm.pc")).unwrap();
    assert!(pc.contains(&format!("prefix={}", prefix.path().display())) && pc.contains("-ldsm"), "{pc}");

    // A C program builds against the installed header and static library, and runs.
    let exe = prefix.path().join("pi-installed");
    let p = prefix.path();
    let out = Command::new("cc")
        .args(["-O2", "-I"])
        .arg(p.join("include"))
        .arg(root().join("examples/c/pi.c"))
        .arg(p.join("lib/libdsm.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("cc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = TestEnv::new();
    let o = run(&exe, &["-n", "2", "-s", "1000000"], &c_env(&env, &session_name("installed"), 2));
    assert_correct(&o);
    std::fs::remove_file(&exe).unwrap();

    let (profile, _) = profile();
    let o = Command::new(dsm_tests::programs::xtask())
        .args(["uninstall", "--prefix"])
        .arg(prefix.path())
        .output()
        .expect("run xtask uninstall");
    assert!(o.status.success(), "xtask uninstall ({profile}): {}", text(&o));
    assert_eq!(files(prefix.path()), Vec::<String>::new());
    assert!(!prefix.path().join("include/dsm").exists());
}
