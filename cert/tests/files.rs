//! File-level tests: generating, ensuring and issuing dev certificates, and
//! the errors reported for missing, broken and mismatched files.

use std::fs;
use std::path::Path;

use dsm_cert::*;

fn gen(dir: &Path) {
    generate(dir, &[]).expect("generate");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn generate_writes_six_files_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("certs");
    let written = generate(&dir, &["10.1.2.3".into(), "coord.example".into()]).unwrap();
    let expected: Vec<_> = ALL_FILES.iter().map(|n| dir.join(n)).collect();
    assert_eq!(written, expected);
    for path in &written {
        let text = fs::read_to_string(path).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{}", path.display());
    }
    #[cfg(unix)]
    {
        for key in [CA_KEY, COORDINATOR_KEY, CLIENT_KEY] {
            assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
        }
        assert_eq!(mode(&dir.join(CA_CERT)), 0o644);
    }
    // No temporary files are left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 6);

    // Overwrites existing files (and fixes a too-open key mode).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join(CA_KEY), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let before = fs::read(dir.join(CA_CERT)).unwrap();
    generate(&dir, &[]).unwrap();
    assert_ne!(before, fs::read(dir.join(CA_CERT)).unwrap());
    #[cfg(unix)]
    assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
}

#[test]
fn generate_rejects_bad_san_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let err = generate(&dir, &["not a name".into()]).unwrap_err();
    assert!(matches!(err, Error::InvalidSan { .. }), "{err}");
    assert!(err.to_string().contains("not a name"), "{err}");
    assert!(!dir.exists());
}

#[test]
fn ensure_creates_once_then_reports_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    assert!(ensure(&dir, &[]).unwrap());
    let ca = fs::read(dir.join(CA_CERT)).unwrap();
    assert!(!ensure(&dir, &[]).unwrap());
    assert_eq!(
        ca,
        fs::read(dir.join(CA_CERT)).unwrap(),
        "ensure must not regenerate"
    );

    fs::remove_file(dir.join(CLIENT_KEY)).unwrap();
    fs::remove_file(dir.join(COORDINATOR_CERT)).unwrap();
    let err = ensure(&dir, &[]).unwrap_err();
    match &err {
        Error::Incomplete { dir: d, missing } => {
            assert_eq!(d, &dir);
            assert_eq!(
                missing,
                &vec![dir.join(COORDINATOR_CERT), dir.join(CLIENT_KEY)]
            );
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("coordinator.pem") && msg.contains("client.key"),
        "{msg}"
    );
    assert!(msg.contains("dsm certs --new-ca --force --dir"), "{msg}");

    // Even with ca.pem gone, a partial set is not silently overwritten.
    fs::remove_file(dir.join(CA_CERT)).unwrap();
    assert!(matches!(ensure(&dir, &[]), Err(Error::Incomplete { .. })));
}

#[test]
fn configs_build_from_generated_material() {
    let tmp = tempfile::tempdir().unwrap();
    gen(tmp.path());
    let server = server_tls_config(tmp.path()).unwrap();
    assert_eq!(server.alpn_protocols, vec![b"dsm".to_vec()]);
    let client = client_tls_config(tmp.path()).unwrap();
    assert_eq!(client.alpn_protocols, vec![b"dsm".to_vec()]);
    assert!(client.client_auth_cert_resolver.has_certs());
    let anon = client_tls_config_from(&tmp.path().join(CA_CERT), None).unwrap();
    assert!(!anon.client_auth_cert_resolver.has_certs());
    quic_server_config(tmp.path(), &Transport::default(), std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
    quic_client_config(client, &Transport::default(), std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
}

#[test]
fn missing_ca_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    gen(tmp.path());
    let ca = tmp.path().join(CA_CERT);
    fs::remove_file(&ca).unwrap();
    for err in [
        server_tls_config(tmp.path()).unwrap_err(),
        client_tls_config(tmp.path()).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Missing { path, .. } if *path == ca),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&ca.display().to_string()), "{msg}");
        assert!(msg.contains("is missing"), "{msg}");
        assert!(
            msg.contains(&format!("dsm certs --dir {}", tmp.path().display())),
            "{msg}"
        );
    }
}

#[test]
fn garbage_coordinator_cert_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    gen(tmp.path());
    let path = tmp.path().join(COORDINATOR_CERT);
    let cases: [&[u8]; 4] = [
        b"this is not a certificate\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
        b"",
    ];
    for garbage in cases {
        fs::write(&path, garbage).unwrap();
        let err = server_tls_config(tmp.path()).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { path: p, .. } if *p == path),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not valid"), "{msg}");
    }
    // A key file where a certificate is expected.
    fs::copy(tmp.path().join(COORDINATOR_KEY), &path).unwrap();
    let err = server_tls_config(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

#[test]
fn garbage_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    gen(tmp.path());
    let key = tmp.path().join(CLIENT_KEY);
    fs::copy(tmp.path().join(CLIENT_CERT), &key).unwrap();
    let err = client_tls_config(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { path, .. } if *path == key),
        "{err:?}"
    );
    assert!(err.to_string().contains("no PEM private key"), "{err}");

    fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = client_tls_config(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { path, .. } if *path == key),
        "{err:?}"
    );
}

#[cfg(unix)]
#[test]
fn unreadable_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    gen(tmp.path());
    // A directory in place of the file gives an I/O error other than NotFound,
    // even when running as root.
    let path = tmp.path().join(CLIENT_CERT);
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let err = client_tls_config(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Unreadable { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn swapped_key_is_a_mismatch_naming_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    gen(tmp.path());
    let cert = tmp.path().join(COORDINATOR_CERT);
    let key = tmp.path().join(COORDINATOR_KEY);
    fs::copy(tmp.path().join(CLIENT_KEY), &key).unwrap();
    let err = server_tls_config(tmp.path()).unwrap_err();
    match &err {
        Error::KeyMismatch { cert: c, key: k } => {
            assert_eq!(c, &cert);
            assert_eq!(k, &key);
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&cert.display().to_string()), "{msg}");
    assert!(msg.contains(&key.display().to_string()), "{msg}");
}

#[test]
fn certificate_from_another_ca_is_detected() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    gen(a.path());
    gen(b.path());
    for name in [CLIENT_CERT, CLIENT_KEY] {
        fs::copy(b.path().join(name), a.path().join(name)).unwrap();
    }
    let err = client_tls_config(a.path()).unwrap_err();
    assert!(
        matches!(&err, Error::NotSignedByCa { cert, ca }
            if *cert == a.path().join(CLIENT_CERT) && *ca == a.path().join(CA_CERT)),
        "{err:?}"
    );
    for name in [COORDINATOR_CERT, COORDINATOR_KEY] {
        fs::copy(b.path().join(name), a.path().join(name)).unwrap();
    }
    let err = server_tls_config(a.path()).unwrap_err();
    assert!(matches!(&err, Error::NotSignedByCa { .. }), "{err:?}");
    // The explicit-path variant does not check, so refusal tests can use it.
    client_tls_config_from(
        &a.path().join(CA_CERT),
        Some((&b.path().join(CLIENT_CERT), &b.path().join(CLIENT_KEY))),
    )
    .unwrap();
}

#[test]
fn issue_client_and_self_signed_client() {
    let tmp = tempfile::tempdir().unwrap();
    gen(tmp.path());
    let out = tmp.path().join("issued");
    let (cert, key) = issue_client(tmp.path(), "worker-1", &out).unwrap();
    assert_eq!(cert, out.join("worker-1.pem"));
    assert_eq!(key, out.join("worker-1.key"));
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
    let ca = tmp.path().join(CA_CERT);
    client_tls_config_from(&ca, Some((&cert, &key))).unwrap();

    let (scert, skey) = self_signed_client("rogue", &out).unwrap();
    assert_eq!(scert, out.join("rogue.pem"));
    client_tls_config_from(&ca, Some((&scert, &skey))).unwrap();

    assert!(matches!(
        issue_client(tmp.path(), "../evil", &out),
        Err(Error::InvalidName { .. })
    ));
    fs::remove_file(tmp.path().join(CA_KEY)).unwrap();
    let err = issue_client(tmp.path(), "worker-2", &out).unwrap_err();
    assert!(
        matches!(&err, Error::Missing { path, .. } if *path == tmp.path().join(CA_KEY)),
        "{err:?}"
    );
}

#[test]
fn issue_client_refuses_a_foreign_ca() {
    let tmp = tempfile::tempdir().unwrap();
    gen(tmp.path());
    // A matching cert/key pair whose subject is not dsm-cert's CA: rcgen can
    // sign with the key, but the result would not chain to this ca.pem.
    self_signed_client("other-ca", tmp.path()).unwrap();
    fs::rename(tmp.path().join("other-ca.pem"), tmp.path().join(CA_CERT)).unwrap();
    fs::rename(tmp.path().join("other-ca.key"), tmp.path().join(CA_KEY)).unwrap();
    let err = issue_client(tmp.path(), "worker", &tmp.path().join("out")).unwrap_err();
    assert!(matches!(err, Error::ForeignCa { .. }), "{err:?}");
    assert!(!tmp.path().join("out").join("worker.pem").exists());
}
