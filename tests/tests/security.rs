//! Certificates, hellos and garbage frames at the coordinator: refused clearly, never a panic.

use std::time::Duration;

use dsm_proto::{close_code, encode_frame, Hello, ToCoordinator, ToProcess, HELLO_LEN};
use dsm_tests::{session_name, TestEnv};

const PAGE: u64 = 4096;

fn refused(err: dsm::Error) {
    assert!(
        matches!(err, dsm::Error::CertificateRejected { .. }),
        "expected a certificate refusal, got: {err}"
    );
    assert!(err.to_string().contains("signed by the coordinator's CA"), "{err}");
}

#[test]
fn client_without_certificate_is_refused() {
    let env = TestEnv::new();
    let tls = dsm_cert::client_tls_config_from(&env.cert_dir().join(dsm_cert::CA_CERT), None).unwrap();
    let err = raw_attach(&env, tls).unwrap_err();
    assert!(err.contains("error 116"), "TLS alert 116 (certificate required): {err}");
}

#[test]
fn self_signed_client_is_refused() {
    let env = TestEnv::new();
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = dsm_cert::self_signed_client("mallory", other.path()).unwrap();
    let cfg = env.config(&session_name("selfsigned"), PAGE, 1).client_cert(cert, key).build().unwrap();
    refused(dsm::Session::attach(&cfg).unwrap_err());
}

#[test]
fn client_of_another_ca_is_refused() {
    let env = TestEnv::new();
    let other = tempfile::tempdir().unwrap();
    dsm_cert::generate(other.path(), &[]).unwrap();
    let cfg = env
        .config(&session_name("otherca"), PAGE, 1)
        .client_cert(other.path().join("client.pem"), other.path().join("client.key"))
        .build()
        .unwrap();
    refused(dsm::Session::attach(&cfg).unwrap_err());
    // The coordinator is still fine afterwards.
    let ok = dsm::Session::attach(&env.config(&session_name("after"), PAGE, 1).build().unwrap()).unwrap();
    ok.barrier().unwrap();
}

/// Connects with `tls` and tries a hello + attach by hand; returns the first error as text.
fn raw_attach(env: &TestEnv, tls: rustls_cfg::ClientConfig) -> Result<(), String> {
    raw(env, tls, |conn, mut send, mut recv| async move {
        // With TLS 1.3 the client finishes its side of the handshake before the server has checked
        // the client's certificate: the refusal shows on the first read, as a closed connection.
        let _ = send.write_all(&Hello::ours().encode()).await;
        let mut h = [0u8; HELLO_LEN];
        match recv.read_exact(&mut h).await {
            Ok(()) => Ok(()),
            Err(_) => Err(conn.closed().await.to_string()),
        }
    })
}

mod rustls_cfg {
    pub use quinn::rustls::ClientConfig;
}

fn raw<F, Fut>(env: &TestEnv, tls: quinn::rustls::ClientConfig, f: F) -> Result<(), String>
where
    F: FnOnce(quinn::Connection, quinn::SendStream, quinn::RecvStream) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(dsm_cert::quic_client_config(tls, &dsm_cert::Transport::default(), std::net::Ipv4Addr::LOCALHOST.into()).unwrap());
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            let conn = ep.connect(env.addr(), "127.0.0.1").unwrap().await.map_err(|e| e.to_string())?;
            let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            f(conn, send, recv).await
        })
        .await
        .map_err(|_| "timed out".to_string())?;
        ep.close(0u32.into(), b"");
        r
    })
}

fn good_tls(env: &TestEnv) -> quinn::rustls::ClientConfig {
    dsm_cert::client_tls_config(env.cert_dir()).unwrap()
}

#[test]
fn unknown_protocol_version_is_clear_on_the_coordinator_side() {
    let env = TestEnv::new();
    let r = raw(&env, good_tls(&env), |conn, mut send, mut recv| async move {
        send.write_all(&Hello { version: 77 }.encode()).await.map_err(|e| e.to_string())?;
        let mut h = [0u8; HELLO_LEN];
        recv.read_exact(&mut h).await.map_err(|e| e.to_string())?;
        assert_eq!(Hello::decode(h).unwrap(), Hello::ours(), "the coordinator announces its version");
        match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(u64::from(c.error_code), u64::from(close_code::VERSION_MISMATCH));
                let reason = String::from_utf8_lossy(&c.reason).into_owned();
                assert!(reason.contains(&format!("this side speaks version {}, the peer speaks version 77", dsm_proto::PROTOCOL_VERSION)), "{reason}");
                Ok(())
            }
            other => Err(format!("unexpected close: {other}")),
        }
    });
    r.unwrap();
}

#[test]
fn garbage_frames_close_the_connection_and_the_coordinator_survives() {
    let env = TestEnv::new();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(42);
    let mut cases: Vec<Vec<u8>> = vec![
        u32::MAX.to_le_bytes().to_vec(),                                   // oversized header
        ((dsm_proto::MAX_FRAME_LEN + 1) as u32).to_le_bytes().to_vec(),    // just over the cap
        [5u32.to_le_bytes().to_vec(), vec![0xff; 5]].concat(),             // malformed payload
    ];
    for _ in 0..20 {
        let len = rand::Rng::gen_range(&mut rng, 1..300);
        cases.push((0..len).map(|_| rand::Rng::gen::<u8>(&mut rng)).collect());
    }
    for bytes in cases {
        let r = raw(&env, good_tls(&env), |conn, mut send, mut recv| async move {
            send.write_all(&Hello::ours().encode()).await.map_err(|e| e.to_string())?;
            let mut h = [0u8; HELLO_LEN];
            recv.read_exact(&mut h).await.map_err(|e| e.to_string())?;
            send.write_all(&bytes).await.map_err(|e| e.to_string())?;
            // Either the coordinator closes us for a protocol error, refuses the "attach", or waits
            // for the rest of a frame that never comes (a prefix): all fine, none may crash it.
            let _ = tokio::time::timeout(Duration::from_millis(300), conn.closed()).await;
            Ok(())
        });
        let _ = r;
    }
    // A valid frame that is not an attach is refused with a clear reason.
    raw(&env, good_tls(&env), |_conn, mut send, mut recv| async move {
        send.write_all(&Hello::ours().encode()).await.map_err(|e| e.to_string())?;
        let mut h = [0u8; HELLO_LEN];
        recv.read_exact(&mut h).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        encode_frame(&ToCoordinator::Barrier { epoch: 0 }, &mut buf).unwrap();
        send.write_all(&buf).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        recv.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        let msg: ToProcess = dsm_proto::frame::decode_payload(&body).unwrap();
        assert_eq!(msg, ToProcess::Refused(dsm_proto::Refusal::NotAttached));
        Ok(())
    })
    .unwrap();
    // Still serving sessions.
    let s = dsm::Session::attach(&env.config(&session_name("alive"), PAGE, 1).build().unwrap()).unwrap();
    s.barrier().unwrap();
}
