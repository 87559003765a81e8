//! `dsm certs` as installed: the files it writes load into both TLS configurations and work
//! over real mutual TLS, a client certificate from another CA is refused, and nothing is
//! overwritten without `--force`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use dsm_tests::{built_binary, session_name};

fn dsm(args: &[&str]) -> Output {
    Command::new(built_binary("dsm")).args(args).env_remove("DSM_CERT_DIR").output().unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn attach(addr: std::net::SocketAddr, ca_dir: &Path, client: &Path) -> Result<dsm::Session, dsm::Error> {
    let cfg = dsm::Config::builder()
        .coordinator(addr.to_string())
        .cert_dir(ca_dir)
        .client_cert(client.join("client.pem"), client.join("client.key"))
        .session(session_name("certs"))
        .size(4096)
        .nprocs(1)
        .attach_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    dsm::Session::attach(&cfg)
}

#[test]
fn dsm_certs_files_work_for_both_sides_and_a_foreign_client_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let d = dir.to_str().unwrap();
    let out = dsm(&["certs", "--dir", d, "--san", "127.0.0.1", "--san", "coord.test", "--client", "node1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("coordinator certificate for localhost, 127.0.0.1, ::1, coord.test"), "{text}");
    assert!(text.contains("what to copy where") && text.contains(&format!("{d}/clients/node1")), "{text}");
    let node1 = dir.join("clients/node1");
    for key in [dir.join("ca.key"), dir.join("coordinator.key"), dir.join("client.key"), node1.join("client.key")] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }

    // Both TLS configurations load from what was written, and a coordinator serves with them.
    dsm_cert::server_tls_config(&dir).expect("coordinator side");
    dsm_cert::client_tls_config(&node1).expect("node1's set, as copied to its machine");
    let mut config = dsm_coordinator::Config::new("127.0.0.1:0".parse().unwrap());
    config.cert_dir = dir.clone();
    let coordinator = dsm_coordinator::spawn(config).unwrap();
    let s = attach(coordinator.local_addr(), &node1, &node1).expect("node1's certificate is accepted");
    s.barrier().unwrap();
    s.detach().unwrap();

    // Another CA's client, trusting our coordinator's CA: refused by the coordinator.
    let other = tmp.path().join("other");
    assert!(dsm(&["certs", "--dir", other.to_str().unwrap(), "--client", "mallory"]).status.success());
    let err = attach(coordinator.local_addr(), &node1, &other.join("clients/mallory")).unwrap_err();
    assert!(matches!(err, dsm::Error::CertificateRejected { .. }), "{err}");

    // Asking again for what exists is refused, and changes nothing.
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let node1_cert = std::fs::read(node1.join("client.pem")).unwrap();
    let again = dsm(&["certs", "--dir", d, "--client", "node1"]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(node1.join("client.pem")).unwrap(), node1_cert);
    // One more machine from the same CA, and --force re-issues node1's from it too.
    assert!(dsm(&["certs", "--dir", d, "--client", "node2"]).status.success());
    assert!(dsm(&["certs", "--dir", d, "--client", "node1", "--force"]).status.success());
    assert_ne!(std::fs::read(node1.join("client.pem")).unwrap(), node1_cert);
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca, "the CA is kept");
    for node in ["node1", "node2"] {
        let set = dir.join("clients").join(node);
        attach(coordinator.local_addr(), &set, &set).unwrap_or_else(|e| panic!("{node}: {e}")).detach().unwrap();
    }
}
