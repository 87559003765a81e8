//! Running the project's programs from tests: the built artifacts (`libdsm.a`, the `dsm`
//! launcher, the examples), C programs compiled against them, an install into a temporary
//! prefix, and collecting a process's output with a timeout.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::sibling_binary;

/// How long a test program may run before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The cargo profile of this test executable (`dev` for `target/debug`), and the target
/// directory the nested builds use: `<target>/capi-tests`, separate from the one of `cargo test`
/// because its feature unification differs and sharing would rebuild the runtime on every run.
pub fn profile() -> (String, PathBuf) {
    let dir = sibling_binary("libdsm.a").parent().expect("target/<profile>").to_path_buf();
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_string();
    let target = dir.parent().expect("target dir").join("capi-tests");
    let profile = if name == "debug" { "dev".to_string() } else { name };
    (profile, target)
}

/// The directory holding libdsm.a, the `dsm` launcher and the Rust examples. `cargo test
/// --workspace` (what `cargo xtask test` runs) builds them next to this test; only when they are
/// missing (a filtered `cargo test -p dsm-tests`) are they built here, in a target directory of
/// their own (`<target>/capi-tests`: the outer cargo holds the lock on its own, and its feature
/// unification differs).
pub fn artifacts() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let outer = sibling_binary("libdsm.a").parent().expect("target/<profile>").to_path_buf();
        if ["libdsm.a", "libdsm.so", "dsm", "dsm-coordinator", "pi", "xtask"].iter().all(|f| outer.join(f).is_file()) {
            return outer;
        }
        let (profile, target) = profile();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--profile", &profile])
            .args(["-p", "dsm", "-p", "dsm-coordinator", "-p", "dsm-examples", "-p", "xtask"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of libdsm, dsm, xtask and the examples failed");
        let dir = target.join(if profile == "dev" { "debug" } else { &profile });
        for f in ["libdsm.a", "libdsm.so", "dsm", "pi", "xtask"] {
            assert!(dir.join(f).is_file(), "{} was not built", dir.join(f).display());
        }
        dir
    })
}

/// Compiles a C program of the source tree against `runtime/include` and `libdsm.a` (once per
/// run), with `-Wall -Wextra -Werror`.
pub fn c_program(source: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(source) {
        return p.clone();
    }
    let dir = artifacts();
    let out_dir = dir.join("c-tests");
    std::fs::create_dir_all(&out_dir).expect("create c-tests dir");
    let name = Path::new(source).file_stem().unwrap().to_string_lossy().into_owned();
    let exe = out_dir.join(&name);
    let out = Command::new("cc")
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("runtime/include"))
        .arg(root().join(source))
        .arg(dir.join("libdsm.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc (a C compiler is needed for these tests)");
    assert!(out.status.success(), "cc {source} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    built.insert(source.to_string(), exe.clone());
    exe
}

/// The `xtask` binary next to the artifacts, run directly (a nested `cargo xtask` would wait
/// for the outer cargo's lock).
pub fn xtask() -> PathBuf {
    artifacts().join("xtask")
}

/// Runs `cargo xtask install --no-build` of the artifacts into `prefix`; returns its output.
pub fn install_into(prefix: &Path) -> Output {
    let (profile, _) = profile();
    let target = artifacts().parent().expect("target dir").to_path_buf();
    let o = Command::new(xtask())
        .args(["install", "--profile", &profile, "--no-build", "--prefix"])
        .arg(prefix)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(root())
        .output()
        .expect("run xtask install");
    assert!(o.status.success(), "xtask install: {}", text(&o));
    o
}

/// Runs `exe args` with `envs` to completion (killed after [`TIMEOUT`]).
pub fn run(exe: &Path, args: &[&str], envs: &[(String, String)]) -> Output {
    run_without(exe, args, envs, &[])
}

/// [`run`], with the variables `unset` removed from the inherited environment.
pub fn run_without(exe: &Path, args: &[&str], envs: &[(String, String)], unset: &[&str]) -> Output {
    let mut cmd = Command::new(exe);
    for var in unset {
        cmd.env_remove(var);
    }
    let child = cmd
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("DSM_RANK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
    finish(child, TIMEOUT)
}

/// Waits for `child` (killing it after `timeout`) and collects its output.
pub fn finish(mut child: Child, timeout: Duration) -> Output {
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: o.join().unwrap(), stderr: e.join().unwrap() }
}

/// A process's status and output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The value of `key=` on the output's `result:` line.
pub fn field(o: &Output, key: &str) -> Option<String> {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = out.lines().find(|l| l.contains("result:"))?.to_string();
    line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}
