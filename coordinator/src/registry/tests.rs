//! The registry's unit tests: session life cycle, mismatched attaches, barriers and semaphores,
//! lost and detached members, and arbitrary messages from members.

use super::*;

fn attach(r: &mut Registry, conn: ConnId, session: &str, size: u64, nprocs: u32) -> Outbox {
    let mut out = Vec::new();
    let req = AttachRequest { session: session.into(), size, nprocs, label: format!("c{conn}"), peer: None };
    r.handle_message(conn, ToCoordinator::Attach(req), &mut out);
    out
}

fn send(r: &mut Registry, conn: ConnId, msg: ToCoordinator) -> Outbox {
    let mut out = Vec::new();
    r.handle_message(conn, msg, &mut out);
    out
}

fn start(r: &mut Registry, session: &str, conns: &[ConnId]) {
    for &c in conns {
        attach(r, c, session, 4096, conns.len() as u32);
    }
}

#[test]
fn ranks_follow_attach_order_and_start_waits_for_all() {
    let mut r = Registry::new();
    let out = attach(&mut r, 10, "s", 4096, 3);
    assert_eq!(out, vec![Output::Send(10, ToProcess::Joined { joined: 1, nprocs: 3 })]);
    attach(&mut r, 20, "s", 4096, 3);
    let out = attach(&mut r, 5, "s", 4096, 3);
    let attached: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(c, ToProcess::Attached { rank, .. }) => Some((*c, *rank)),
            _ => None,
        })
        .collect();
    assert_eq!(attached, vec![(10, 0), (20, 1), (5, 2)]);
}

#[test]
fn mismatches_are_refused_clearly() {
    let mut r = Registry::new();
    attach(&mut r, 1, "s", 8192, 2);
    let out = attach(&mut r, 2, "s", 4096, 2);
    assert_eq!(
        out[0],
        Output::Send(
            2,
            ToProcess::Refused(Refusal::SizeMismatch {
                session: "s".into(),
                declared: 8192,
                requested: 4096
            })
        )
    );
    assert!(matches!(out[1], Output::Close(2, _)));
    let out = attach(&mut r, 3, "s", 8192, 3);
    assert!(matches!(
        out[0],
        Output::Send(3, ToProcess::Refused(Refusal::NprocsMismatch { declared: 2, requested: 3, .. }))
    ));
    let out = attach(&mut r, 4, "t", 100, 3);
    assert!(matches!(out[0], Output::Send(4, ToProcess::Refused(Refusal::BadSize(_)))));
    let out = attach(&mut r, 4, "t", 4096, 0);
    assert!(matches!(out[0], Output::Send(4, ToProcess::Refused(Refusal::BadNprocs { .. }))));
}

#[test]
fn full_session_refuses_and_name_is_reusable_after_end() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2]);
    let out = attach(&mut r, 3, "s", 4096, 2);
    assert!(matches!(out[0], Output::Send(3, ToProcess::Refused(Refusal::SessionFull { .. }))));
    send(&mut r, 1, ToCoordinator::Detach);
    assert_eq!(r.session_count(), 1);
    let out = send(&mut r, 2, ToCoordinator::Detach);
    assert_eq!(out, vec![Output::Send(2, ToProcess::Detached)]);
    assert_eq!(r.session_count(), 0);
    assert_eq!(r.take_ended().len(), 1);
    // Same name, new shape: a fresh session.
    start(&mut r, "s", &[7, 8, 9]);
    assert_eq!(r.session_count(), 1);
}

#[test]
fn barrier_releases_everyone_once_all_arrive() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2, 3]);
    for epoch in 0..3 {
        assert!(send(&mut r, 1, ToCoordinator::Barrier { epoch }).is_empty());
        assert!(send(&mut r, 3, ToCoordinator::Barrier { epoch }).is_empty());
        let out = send(&mut r, 2, ToCoordinator::Barrier { epoch });
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|o| matches!(o, Output::Send(_, ToProcess::BarrierDone { epoch: e }) if *e == epoch)));
    }
}

#[test]
fn counting_semaphore_releases_waiters_in_order() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2, 3]);
    let w = |req| ToCoordinator::SemaphoreWait { req, name: "sem".into(), initial: 0 };
    let p = |req| ToCoordinator::SemaphorePost { req, name: "sem".into(), initial: 0 };
    assert!(send(&mut r, 1, w(11)).is_empty());
    assert!(send(&mut r, 2, w(21)).is_empty());
    let out = send(&mut r, 3, p(31));
    assert_eq!(
        out,
        vec![
            Output::Send(1, ToProcess::SemaphoreAcquired { req: 11 }),
            Output::Send(3, ToProcess::SemaphorePosted { req: 31 })
        ]
    );
    send(&mut r, 3, p(32));
    send(&mut r, 3, p(33)); // count is now 1
    let out = send(&mut r, 1, w(12));
    assert_eq!(out, vec![Output::Send(1, ToProcess::SemaphoreAcquired { req: 12 })]);
    assert!(send(&mut r, 1, w(13)).is_empty());
}

#[test]
fn long_semaphore_names_are_an_error() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1]);
    let name = "x".repeat(dsm_proto::MAX_SEMAPHORE_NAME + 1);
    let out = send(&mut r, 1, ToCoordinator::SemaphorePost { req: 1, name, initial: 0 });
    assert!(matches!(out[0], Output::Send(1, ToProcess::Failed { req: Some(1), error: SessionFault::BadName(_) })));
}

#[test]
fn lost_rank_fails_barrier_and_semaphore_waiters() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2, 3, 4]);
    send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
    send(&mut r, 2, ToCoordinator::SemaphoreWait { req: 5, name: "x".into(), initial: 0 });
    let mut out = Vec::new();
    r.handle_disconnect(4, "timed out", &mut out);
    let fault = SessionFault::RankLost { rank: 3, detail: "timed out".into() };
    assert!(out.contains(&Output::Send(1, ToProcess::Failed { req: None, error: fault.clone() })));
    assert!(out.contains(&Output::Send(2, ToProcess::Failed { req: Some(5), error: fault.clone() })));
    // Later barriers fail at once instead of hanging.
    let out = send(&mut r, 3, ToCoordinator::Barrier { epoch: 1 });
    assert_eq!(out, vec![Output::Send(3, ToProcess::Failed { req: None, error: fault })]);
    for c in [1, 2, 3] {
        send(&mut r, c, ToCoordinator::Detach);
    }
    assert_eq!(r.session_count(), 0);
    assert_eq!(r.take_ended()[0].lost, vec![3]);
}

#[test]
fn pending_member_leaving_frees_its_slot() {
    let mut r = Registry::new();
    attach(&mut r, 1, "s", 4096, 2);
    let mut out = Vec::new();
    r.handle_disconnect(1, "closed", &mut out);
    assert_eq!(r.session_count(), 0);
    attach(&mut r, 2, "s", 4096, 3);
    attach(&mut r, 3, "s", 4096, 3);
    let mut out = Vec::new();
    r.handle_disconnect(2, "closed", &mut out);
    assert_eq!(out, vec![Output::Send(3, ToProcess::Joined { joined: 1, nprocs: 3 })]);
}

#[test]
fn detached_rank_fails_barrier_instead_of_hanging() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2]);
    send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
    let out = send(&mut r, 2, ToCoordinator::Detach);
    assert!(out.contains(&Output::Send(
        1,
        ToProcess::Failed { req: None, error: SessionFault::RankDetached { rank: 1 } }
    )));
}

#[test]
fn messages_before_attach_are_refused() {
    let mut r = Registry::new();
    let out = send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
    assert_eq!(out[0], Output::Send(1, ToProcess::Refused(Refusal::NotAttached)));
}

#[test]
fn the_first_use_of_a_semaphore_fixes_its_initial_count() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2]);
    let w = |req, initial| ToCoordinator::SemaphoreWait { req, name: "m".into(), initial };
    let p = |req, initial| ToCoordinator::SemaphorePost { req, name: "m".into(), initial };
    // Created at 1: a mutex. The first wait passes, the second blocks until a post.
    assert_eq!(send(&mut r, 1, w(1, 1)), vec![Output::Send(1, ToProcess::SemaphoreAcquired { req: 1 })]);
    assert!(send(&mut r, 2, w(2, 1)).is_empty());
    let out = send(&mut r, 1, p(3, 1));
    assert!(out.contains(&Output::Send(2, ToProcess::SemaphoreAcquired { req: 2 })), "{out:?}");
    // Another initial count for the same name is a clear error, for waits and posts alike.
    let mismatch = SessionFault::SemaphoreInitialMismatch { name: "m".into(), declared: 1, requested: 0 };
    let out = send(&mut r, 2, w(4, 0));
    assert_eq!(out, vec![Output::Send(2, ToProcess::Failed { req: Some(4), error: mismatch.clone() })]);
    let out = send(&mut r, 2, p(5, 0));
    assert_eq!(out, vec![Output::Send(2, ToProcess::Failed { req: Some(5), error: mismatch })]);
    // A post created at 0 lets exactly one wait through.
    let q = |req| ToCoordinator::SemaphorePost { req, name: "z".into(), initial: 0 };
    let v = |req| ToCoordinator::SemaphoreWait { req, name: "z".into(), initial: 0 };
    assert!(send(&mut r, 1, v(6)).is_empty());
    let out = send(&mut r, 2, q(7));
    assert!(out.contains(&Output::Send(1, ToProcess::SemaphoreAcquired { req: 6 })), "{out:?}");
}

#[test]
fn an_attach_while_the_session_of_that_name_ends_joins_the_next_one() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2]);
    send(&mut r, 1, ToCoordinator::Detach);
    // Rank 1 is still attached: the session is ending, not over. The new attach waits.
    let out = attach(&mut r, 3, "s", 4096, 2);
    assert!(out.is_empty(), "{out:?}");
    // Messages other than the attach are still a protocol violation while queued.
    assert!(attach(&mut r, 5, "s", 4096, 2).is_empty());
    let out = send(&mut r, 5, ToCoordinator::Barrier { epoch: 0 });
    assert!(out.iter().any(|o| matches!(o, Output::Close(5, _))), "{out:?}");
    r.handle_disconnect(5, "closed after a protocol violation", &mut Vec::new());
    let out = attach(&mut r, 4, "s", 4096, 2);
    assert!(out.is_empty(), "{out:?}");
    // The last detach ends the session; the queued attaches form the next one and start it.
    let out = send(&mut r, 2, ToCoordinator::Detach);
    assert!(out.contains(&Output::Send(2, ToProcess::Detached)));
    assert!(out.contains(&Output::Send(3, ToProcess::Attached { rank: 0, nprocs: 2, size: 4096, peers: vec![] })), "{out:?}");
    assert!(out.contains(&Output::Send(4, ToProcess::Attached { rank: 1, nprocs: 2, size: 4096, peers: vec![] })), "{out:?}");
    assert_eq!(r.take_ended().len(), 1);
    assert_eq!(r.session_count(), 1);
    // A queued attach may declare a new shape; one that leaves before the end is dropped.
    start(&mut r, "t", &[10, 11]);
    send(&mut r, 10, ToCoordinator::Detach);
    assert!(attach(&mut r, 12, "t", 8192, 1).is_empty());
    assert!(attach(&mut r, 13, "t", 8192, 1).is_empty());
    let mut out = Vec::new();
    r.handle_disconnect(12, "closed", &mut out);
    let out = send(&mut r, 11, ToCoordinator::Detach);
    assert!(out.contains(&Output::Send(13, ToProcess::Attached { rank: 0, nprocs: 1, size: 8192, peers: vec![] })), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::Send(12, _))), "{out:?}");
}

#[test]
fn a_running_session_with_every_member_active_still_refuses_extra_attaches() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2]);
    let out = attach(&mut r, 3, "s", 4096, 2);
    assert!(matches!(out[0], Output::Send(3, ToProcess::Refused(Refusal::SessionFull { .. }))));
}

/// Any message a (possibly hostile) client may send, with values around the limits.
fn arbitrary_message() -> impl proptest::strategy::Strategy<Value = ToCoordinator> {
    use dsm_proto::{Coherence, PageData, RmwOp};
    use proptest::prelude::*;
    let page = prop_oneof![0u64..4, Just(u64::MAX), 4u64..1 << 20];
    let data = prop_oneof![
        Just(PageData::from(vec![7; dsm_proto::PAGE_SIZE])),
        (0usize..5000).prop_map(|n| PageData::from(vec![1; n])),
        Just(PageData::from(vec![2; 1 << 20])),
    ];
    let coherence = prop_oneof![Just(Coherence::Update), Just(Coherence::Invalidate), Just(Coherence::Adaptive)];
    prop_oneof![
        (any::<u64>(), page.clone()).prop_map(|(req, page)| ToCoordinator::Fetch { req, page }),
        (any::<u64>(), page.clone()).prop_map(|(req, page)| ToCoordinator::Own { req, page }),
        (any::<u64>(), page.clone()).prop_map(|(req, page)| ToCoordinator::ForceOwn { req, page }),
        page.clone().prop_map(|page| ToCoordinator::InvalidateAck { page }),
        (page.clone(), proptest::option::of(data.clone())).prop_map(|(page, data)| ToCoordinator::DowngradeAck { page, data }),
        (page.clone(), proptest::option::of(data.clone())).prop_map(|(page, data)| ToCoordinator::RecallAck { page, data }),
        (page.clone(), data).prop_map(|(page, data)| ToCoordinator::Writeback { page, data }),
        (any::<u64>(), page.clone(), any::<u16>(), any::<u8>(), any::<u128>())
            .prop_map(|(req, page, offset, width, value)| ToCoordinator::Write { req, page, offset, width, value }),
        (any::<u64>(), page.clone(), any::<u16>(), any::<u8>(), any::<u64>())
            .prop_map(|(req, page, offset, width, operand)| ToCoordinator::Rmw { req, page, offset, width, op: RmwOp::Xadd, operand, expected: 0 }),
        (page, any::<u64>(), coherence).prop_map(|(first, count, coherence)| ToCoordinator::Advise { first, count, coherence }),
        (any::<u64>(), "[a-z]{0,70}", 0u32..3).prop_map(|(req, name, initial)| ToCoordinator::SemaphoreWait { req, name, initial }),
        (any::<u64>(), "[a-z]{0,70}", 0u32..3).prop_map(|(req, name, initial)| ToCoordinator::SemaphorePost { req, name, initial }),
        any::<u64>().prop_map(|epoch| ToCoordinator::Barrier { epoch }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// A member sending anything never panics the coordinator; a member that breaks the
    /// protocol is closed and lost, and the other member's session keeps answering: a post
    /// and wait of its own go through, and its barrier either completes or fails clearly.
    #[test]
    fn a_hostile_member_is_closed_and_the_other_keeps_clear_answers(
        msgs in proptest::collection::vec(arbitrary_message(), 1..60)
    ) {
        let mut r = Registry::new();
        start(&mut r, "s", &[1, 2]);
        let mut closed = false;
        for m in msgs {
            let out = send(&mut r, 2, m);
            closed |= out.iter().any(|o| matches!(o, Output::Close(2, _)));
            for o in &out {
                if let Output::Send(c, _) = o {
                    proptest::prop_assert!(*c == 1 || *c == 2, "message to an unknown connection {c}");
                }
            }
        }
        let p = send(&mut r, 1, ToCoordinator::SemaphorePost { req: 900, name: "rank0-own".into(), initial: 0 });
        proptest::prop_assert!(p.contains(&Output::Send(1, ToProcess::SemaphorePosted { req: 900 })), "{p:?}");
        let w = send(&mut r, 1, ToCoordinator::SemaphoreWait { req: 901, name: "rank0-own".into(), initial: 0 });
        proptest::prop_assert!(w.contains(&Output::Send(1, ToProcess::SemaphoreAcquired { req: 901 })), "{w:?}");
        if closed {
            // Rank 1 (conn 2) is lost: rank 0's barrier fails at once with the reason.
            let b = send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
            let clear = b.iter().any(|o| matches!(o, Output::Send(1, ToProcess::Failed { error: SessionFault::RankLost { rank: 1, detail }, .. }) if detail.contains("protocol violation")));
            proptest::prop_assert!(clear, "{b:?}");
        }
    }
}

#[test]
fn a_member_sending_a_short_writeback_is_closed_and_counts_as_lost() {
    let mut r = Registry::new();
    start(&mut r, "s", &[1, 2]);
    send(&mut r, 1, ToCoordinator::Barrier { epoch: 0 });
    let bad = ToCoordinator::Writeback { page: 0, data: dsm_proto::PageData::from(vec![1; 100]) };
    let out = send(&mut r, 2, bad);
    assert!(out.iter().any(|o| matches!(o, Output::Close(2, "protocol violation"))), "{out:?}");
    assert!(
        out.iter().any(|o| matches!(o, Output::Send(1, ToProcess::Failed { req: None, error: SessionFault::RankLost { rank: 1, .. } }))),
        "the waiting barrier of the other member fails with the reason: {out:?}"
    );
    let lost = r.take_events().into_iter().any(|e| matches!(e, Event::RankLost { rank: 1, reason, .. } if reason.contains("protocol violation")));
    assert!(lost, "the loss is reported to the I/O layer (logs, metrics)");
}

/// Attaches `conn` from `addr`, offering `peer` as its fingerprint.
fn attach_from(r: &mut Registry, conn: ConnId, addr: &str, peer: Option<[u8; 32]>, nprocs: u32) -> Outbox {
    r.connected(conn, addr.parse().unwrap());
    let mut out = Vec::new();
    let req = AttachRequest { session: "s".into(), size: 4096, nprocs, label: format!("c{conn}"), peer };
    r.handle_message(conn, ToCoordinator::Attach(req), &mut out);
    out
}

/// The `peers` of every `Attached` in `out`, by connection.
fn attached_peers(out: &Outbox) -> Vec<(ConnId, Vec<Option<PeerAddress>>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(c, ToProcess::Attached { peers, .. }) => Some((*c, peers.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_whose_members_all_offer_fingerprints_gets_their_addresses_by_rank() {
    let mut r = Registry::new();
    attach_from(&mut r, 7, "10.0.0.7:4000", Some([7; 32]), 3);
    attach_from(&mut r, 3, "[fd00::3]:5000", Some([3; 32]), 3);
    let out = attach_from(&mut r, 5, "127.0.0.1:6000", Some([5; 32]), 3);
    let expected = vec![
        Some(PeerAddress { addr: "10.0.0.7:4000".parse().unwrap(), fingerprint: [7; 32] }),
        Some(PeerAddress { addr: "[fd00::3]:5000".parse().unwrap(), fingerprint: [3; 32] }),
        Some(PeerAddress { addr: "127.0.0.1:6000".parse().unwrap(), fingerprint: [5; 32] }),
    ];
    assert_eq!(attached_peers(&out), vec![(7, expected.clone()), (3, expected.clone()), (5, expected)]);
}

#[test]
fn one_member_without_a_fingerprint_or_a_coordinator_without_direct_transfers_means_no_peers() {
    // One process opted out (DSM_DIRECT=0).
    let mut r = Registry::new();
    attach_from(&mut r, 1, "127.0.0.1:1001", Some([1; 32]), 2);
    let out = attach_from(&mut r, 2, "127.0.0.1:1002", None, 2);
    assert_eq!(attached_peers(&out), vec![(1, vec![]), (2, vec![])]);
    // Every process offered, the coordinator does not allow it (--no-direct-transfers).
    let mut r = Registry::new().with_direct_transfers(false);
    attach_from(&mut r, 1, "127.0.0.1:1001", Some([1; 32]), 2);
    let out = attach_from(&mut r, 2, "127.0.0.1:1002", Some([2; 32]), 2);
    assert_eq!(attached_peers(&out), vec![(1, vec![]), (2, vec![])]);
    // A member whose address the I/O layer never gave.
    let mut r = Registry::new();
    attach_from(&mut r, 1, "127.0.0.1:1001", Some([1; 32]), 2);
    let mut out = Vec::new();
    let req = AttachRequest { session: "s".into(), size: 4096, nprocs: 2, label: "c2".into(), peer: Some([2; 32]) };
    r.handle_message(2, ToCoordinator::Attach(req), &mut out);
    assert_eq!(attached_peers(&out), vec![(1, vec![]), (2, vec![])]);
}

#[test]
fn a_waiting_process_that_leaves_takes_its_address_and_fingerprint_with_it() {
    let mut r = Registry::new();
    attach_from(&mut r, 1, "127.0.0.1:1001", None, 2);
    let mut out = Vec::new();
    r.handle_disconnect(1, "gone", &mut out);
    // The process that opted out is gone: the two that offered get each other.
    attach_from(&mut r, 2, "127.0.0.1:1002", Some([2; 32]), 2);
    let out = attach_from(&mut r, 3, "127.0.0.1:1003", Some([3; 32]), 2);
    let peers = attached_peers(&out);
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|(_, p)| p.len() == 2 && p.iter().all(Option::is_some)), "{peers:?}");
    assert!(!r.addrs.contains_key(&1));
}
