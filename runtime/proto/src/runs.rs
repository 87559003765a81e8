//! Runs of pages on the wire: one message for consecutive pages that the protocol handles alike.
//!
//! The coherence rules are per page (DESIGN.md): the directory serves every page as its own
//! transaction, and a process applies every page message in order. A *run* message is only an
//! encoding of consecutive per-page messages on one FIFO channel — `DataRun { first: 5, count:
//! 3 }` is `Data(5), Data(6), Data(7)` sent back to back — so it changes no order that the
//! protocol can observe (the per-destination order is exactly the per-page one). What it buys is
//! one frame, one ioctl and one copy per run instead of per page.
//!
//! * [`coalesce_to_process`] / [`coalesce_to_coordinator`] merge adjacent mergeable per-page
//!   messages of one channel into run messages (same kind, consecutive pages, same request id,
//!   same mode, same shape of data), at most [`MAX_RUN`] pages each. They never reorder.
//! * [`expand_to_process`] / [`expand_to_coordinator`] turn a run message back into its
//!   per-page messages (the property tests check `expand(coalesce(x)) == x`).
//!
//! The one new protocol element, write-ahead (a conditional [`ToCoordinator::OwnRun`] granted
//! only for pages nobody holds, else [`ToProcess::Denied`]), is model-checked in
//! `runtime/proto/model/` (a copy of `../shared/protocol-model/`).

use crate::wire::{GrantData, PageData, PageNo, ToCoordinator, ToProcess};
use crate::PAGE_SIZE;

/// Most pages in one run message (almost 1 MiB of data: the frame limit is 1 MiB).
pub const MAX_RUN: u32 = 255;

/// Merges adjacent per-page messages to one process into run messages (see the module docs).
/// Linear in the bytes carried: a run's data grows in place.
pub fn coalesce_to_process(msgs: Vec<ToProcess>) -> Vec<ToProcess> {
    let mut out: Vec<ToProcess> = Vec::with_capacity(msgs.len());
    // Page bytes of the messages after the current one: the most a run can still take.
    let mut room: usize = msgs.iter().map(ToProcess::page_bytes).sum();
    for m in msgs {
        room -= m.page_bytes();
        let m = match out.last_mut() {
            Some(last) => match merge_into_process(last, m, room) {
                None => continue,
                Some(m) => m,
            },
            None => m,
        };
        out.push(m);
    }
    out.into_iter().map(single_process).collect()
}

/// Merges adjacent per-page messages to the coordinator into run messages (linear, like
/// [`coalesce_to_process`]).
pub fn coalesce_to_coordinator(msgs: Vec<ToCoordinator>) -> Vec<ToCoordinator> {
    let mut out: Vec<ToCoordinator> = Vec::with_capacity(msgs.len());
    let mut room: usize = msgs.iter().map(ToCoordinator::page_bytes).sum();
    for m in msgs {
        room -= m.page_bytes();
        let m = match out.last_mut() {
            Some(last) => match merge_into_coordinator(last, m, room) {
                None => continue,
                Some(m) => m,
            },
            None => m,
        };
        out.push(m);
    }
    out.into_iter().map(single_coordinator).collect()
}

/// The shape of page contents in a message, for merging: runs hold one shape.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Shape {
    None,
    Zero,
    Bytes,
}

fn shape_of(data: &Option<PageData>) -> Shape {
    if data.is_some() {
        Shape::Bytes
    } else {
        Shape::None
    }
}

fn grant_shape(data: &Option<GrantData>) -> Shape {
    match data {
        None => Shape::None,
        Some(GrantData::Zero) => Shape::Zero,
        Some(GrantData::Bytes(_)) => Shape::Bytes,
    }
}

/// Appends `b`'s bytes to `a` (both of one shape, checked by the caller); `room`: page bytes
/// of the messages after `b`.
fn append(a: &mut Option<PageData>, b: Option<PageData>, room: usize) {
    if let (Some(a), Some(b)) = (a, b) {
        append_bytes(a, &b, room);
    }
}

fn append_grant(a: &mut Option<GrantData>, b: Option<GrantData>, room: usize) {
    if let (Some(GrantData::Bytes(a)), Some(GrantData::Bytes(b))) = (a, b) {
        append_bytes(a, &b, room);
    }
}

/// Appends a page to a run's bytes: in place when both are back-to-back slices of one shared
/// buffer (the coordinator's replies from an acknowledgement run), else copied. When the run's
/// own buffer is full it makes room for all the run can still take (what follows in the
/// input, at most [`MAX_RUN`] pages) at once: a buffer that doubles would move its bytes again
/// at each step, up to 8 times on the way to a full run.
fn append_bytes(run: &mut PageData, page: &PageData, room: usize) {
    let most = (MAX_RUN as usize * PAGE_SIZE).saturating_sub(run.len() + page.len());
    run.append(page, room.min(most));
}

/// `(first, count)` of a run or single-page message of a mergeable kind.
fn span_to_process(m: &ToProcess) -> Option<(PageNo, u32)> {
    Some(match m {
        ToProcess::Data { page, .. }
        | ToProcess::Grant { page, .. }
        | ToProcess::Invalidate { page }
        | ToProcess::Downgrade { page }
        | ToProcess::Recall { page } => (*page, 1),
        run => return run.run_span(),
    })
}

/// Appends `b` to `a` when they merge (`None`); else gives `b` back. `a` may be left in its run
/// form either way ([`single_process`] turns one-page runs back).
fn merge_into_process(a: &mut ToProcess, b: ToProcess, room: usize) -> Option<ToProcess> {
    let (Some((first, n)), Some((next, m))) = (span_to_process(a), span_to_process(&b)) else { return Some(b) };
    if first.checked_add(u64::from(n)) != Some(next) || n + m > MAX_RUN {
        return Some(b);
    }
    use ToProcess as P;
    if !matches!(
        a,
        P::DataRun { .. }
            | P::GrantRun { .. }
            | P::Denied { .. }
            | P::InvalidateRun { .. }
            | P::DowngradeRun { .. }
            | P::RecallRun { .. }
            | P::Forward { .. }
            | P::ForwardNote { .. }
            | P::ForwardAbort { .. }
            | P::InvBackup { .. }
            | P::DropBackup { .. }
            | P::RestoreBackup { .. }
    ) {
        *a = as_run_process(std::mem::replace(a, P::InvalidateRun { first: 0, count: 0 }));
    }
    let b = as_run_process(b);
    match (a, b) {
        (P::DataRun { req, data, mode, count, .. }, P::DataRun { req: r2, data: d2, mode: m2, count: c2, .. })
            if *req == r2 && *mode == m2 && shape_of(data) == shape_of(&d2) =>
        {
            *count += c2;
            append(data, d2, room);
            None
        }
        (P::GrantRun { req, data, count, .. }, P::GrantRun { req: r2, data: d2, count: c2, .. })
            if *req == r2 && grant_shape(data) == grant_shape(&d2) =>
        {
            *count += c2;
            append_grant(data, d2, room);
            None
        }
        (P::Denied { req, count, .. }, P::Denied { req: r2, count: c2, .. })
        | (P::ForwardNote { req, count, .. }, P::ForwardNote { req: r2, count: c2, .. })
        | (P::ForwardAbort { req, count, .. }, P::ForwardAbort { req: r2, count: c2, .. })
            if *req == r2 =>
        {
            *count += c2;
            None
        }
        (P::Forward { req, to, count, .. }, P::Forward { req: r2, to: t2, count: c2, .. }) if *req == r2 && *to == t2 => {
            *count += c2;
            None
        }
        (P::InvalidateRun { count, .. }, P::InvalidateRun { count: c2, .. })
        | (P::DowngradeRun { count, .. }, P::DowngradeRun { count: c2, .. })
        | (P::RecallRun { count, .. }, P::RecallRun { count: c2, .. })
        | (P::InvBackup { count, .. }, P::InvBackup { count: c2, .. })
        | (P::DropBackup { count, .. }, P::DropBackup { count: c2, .. })
        | (P::RestoreBackup { count, .. }, P::RestoreBackup { count: c2, .. }) => {
            *count += c2;
            None
        }
        (_, b) => Some(b),
    }
}

/// A single-page message as a one-page run (others unchanged).
fn as_run_process(m: ToProcess) -> ToProcess {
    match m {
        ToProcess::Data { req, page, data, mode } => ToProcess::DataRun { req, first: page, count: 1, data, mode },
        ToProcess::Grant { req, page, data } => ToProcess::GrantRun { req, first: page, count: 1, data },
        ToProcess::Invalidate { page } => ToProcess::InvalidateRun { first: page, count: 1 },
        ToProcess::Downgrade { page } => ToProcess::DowngradeRun { first: page, count: 1 },
        ToProcess::Recall { page } => ToProcess::RecallRun { first: page, count: 1 },
        other => other,
    }
}

/// A one-page run in its single-page form (others unchanged): the inverse of
/// [`as_run_process`]. `Denied` has no single-page form.
fn single_process(m: ToProcess) -> ToProcess {
    match m {
        ToProcess::DataRun { req, first, count: 1, data, mode } => ToProcess::Data { req, page: first, data, mode },
        ToProcess::GrantRun { req, first, count: 1, data } => ToProcess::Grant { req, page: first, data },
        ToProcess::InvalidateRun { first, count: 1 } => ToProcess::Invalidate { page: first },
        ToProcess::DowngradeRun { first, count: 1 } => ToProcess::Downgrade { page: first },
        ToProcess::RecallRun { first, count: 1 } => ToProcess::Recall { page: first },
        other => other,
    }
}

fn span_to_coordinator(m: &ToCoordinator) -> Option<(PageNo, u32)> {
    Some(match m {
        ToCoordinator::InvalidateAck { page }
        | ToCoordinator::DowngradeAck { page, .. }
        | ToCoordinator::RecallAck { page, .. }
        | ToCoordinator::Writeback { page, .. } => (*page, 1),
        ToCoordinator::InvalidateAckRun { first, count }
        | ToCoordinator::DowngradeAckRun { first, count, .. }
        | ToCoordinator::RecallAckRun { first, count, .. }
        | ToCoordinator::WritebackRun { first, count, .. }
        | ToCoordinator::Got { first, count }
        | ToCoordinator::ForwardAborted { first, count }
        | ToCoordinator::ForwardReturn { first, count, .. }
        | ToCoordinator::BackupAck { first, count, .. }
        | ToCoordinator::BackupData { first, count, .. }
        | ToCoordinator::BackupHome { first, count, .. } => (*first, *count),
        _ => return None,
    })
}

fn as_run_coordinator(m: ToCoordinator) -> ToCoordinator {
    match m {
        ToCoordinator::InvalidateAck { page } => ToCoordinator::InvalidateAckRun { first: page, count: 1 },
        ToCoordinator::DowngradeAck { page, data } => ToCoordinator::DowngradeAckRun { first: page, count: 1, data },
        ToCoordinator::RecallAck { page, data } => ToCoordinator::RecallAckRun { first: page, count: 1, data },
        ToCoordinator::Writeback { page, data } => ToCoordinator::WritebackRun { first: page, count: 1, data },
        other => other,
    }
}

fn single_coordinator(m: ToCoordinator) -> ToCoordinator {
    match m {
        ToCoordinator::InvalidateAckRun { first, count: 1 } => ToCoordinator::InvalidateAck { page: first },
        ToCoordinator::DowngradeAckRun { first, count: 1, data } => ToCoordinator::DowngradeAck { page: first, data },
        ToCoordinator::RecallAckRun { first, count: 1, data } => ToCoordinator::RecallAck { page: first, data },
        ToCoordinator::WritebackRun { first, count: 1, data } => ToCoordinator::Writeback { page: first, data },
        other => other,
    }
}

fn merge_into_coordinator(a: &mut ToCoordinator, b: ToCoordinator, room: usize) -> Option<ToCoordinator> {
    let (Some((first, n)), Some((next, m))) = (span_to_coordinator(a), span_to_coordinator(&b)) else { return Some(b) };
    if first.checked_add(u64::from(n)) != Some(next) || n + m > MAX_RUN {
        return Some(b);
    }
    use ToCoordinator as C;
    if !matches!(
        a,
        C::InvalidateAckRun { .. }
            | C::DowngradeAckRun { .. }
            | C::RecallAckRun { .. }
            | C::WritebackRun { .. }
            | C::Got { .. }
            | C::ForwardAborted { .. }
            | C::ForwardReturn { .. }
            | C::BackupAck { .. }
            | C::BackupData { .. }
            | C::BackupHome { .. }
    ) {
        *a = as_run_coordinator(std::mem::replace(a, C::InvalidateAckRun { first: 0, count: 0 }));
    }
    match (a, as_run_coordinator(b)) {
        (C::InvalidateAckRun { count, .. }, C::InvalidateAckRun { count: c2, .. })
        | (C::Got { count, .. }, C::Got { count: c2, .. })
        | (C::ForwardAborted { count, .. }, C::ForwardAborted { count: c2, .. }) => {
            *count += c2;
            None
        }
        (C::DowngradeAckRun { data, count, .. }, C::DowngradeAckRun { data: d2, count: c2, .. })
        | (C::RecallAckRun { data, count, .. }, C::RecallAckRun { data: d2, count: c2, .. })
            if shape_of(data) == shape_of(&d2) =>
        {
            *count += c2;
            append(data, d2, room);
            None
        }
        (C::BackupAck { kept, count, .. }, C::BackupAck { kept: k2, count: c2, .. }) if *kept == k2 => {
            *count += c2;
            None
        }
        (C::WritebackRun { data, count, .. }, C::WritebackRun { data: d2, count: c2, .. })
        | (C::BackupData { data, count, .. }, C::BackupData { data: d2, count: c2, .. })
        | (C::BackupHome { data, count, .. }, C::BackupHome { data: d2, count: c2, .. }) => {
            *count += c2;
            append_bytes(data, &d2, room);
            None
        }
        (C::ForwardReturn { req, to, data, count, .. }, C::ForwardReturn { req: r2, to: t2, data: d2, count: c2, .. })
            if *req == r2 && *to == t2 =>
        {
            *count += c2;
            append_bytes(data, &d2, room);
            None
        }
        (_, b) => Some(b),
    }
}

/// The `i`-th page of run data (`None` stays `None`). Callers check lengths first
/// ([`check_run`]).
pub fn page_of(data: &Option<PageData>, i: u32) -> Option<PageData> {
    data.as_ref().map(|d| page_slice(d, i))
}

fn page_slice(d: &PageData, i: u32) -> PageData {
    d.page_data(i as usize)
}

/// Checks a run's page count and, when it carries bytes, their length. `what` names it.
pub fn check_run(what: &str, count: u32, data_len: Option<usize>) -> Result<(), String> {
    if count == 0 || count > MAX_RUN {
        return Err(format!("{what} of {count} pages (1 to {MAX_RUN})"));
    }
    if let Some(len) = data_len {
        let want = count as usize * PAGE_SIZE;
        if len != want {
            return Err(format!("{what} of {count} pages carries {len} bytes instead of {want}"));
        }
    }
    Ok(())
}

/// The per-page messages a run message to a process stands for (a per-page message: itself).
pub fn expand_to_process(m: ToProcess) -> Vec<ToProcess> {
    let pages = |first: PageNo, count: u32| (0..count).map(move |i| (i, first + u64::from(i)));
    match m {
        ToProcess::DataRun { req, first, count, data, mode } => pages(first, count)
            .map(|(i, page)| ToProcess::Data { req, page, data: page_of(&data, i), mode })
            .collect(),
        ToProcess::GrantRun { req, first, count, data } => pages(first, count)
            .map(|(i, page)| {
                let data = match &data {
                    None => None,
                    Some(GrantData::Zero) => Some(GrantData::Zero),
                    Some(GrantData::Bytes(b)) => Some(GrantData::Bytes(page_slice(b, i))),
                };
                ToProcess::Grant { req, page, data }
            })
            .collect(),
        ToProcess::InvalidateRun { first, count } => pages(first, count).map(|(_, page)| ToProcess::Invalidate { page }).collect(),
        ToProcess::DowngradeRun { first, count } => pages(first, count).map(|(_, page)| ToProcess::Downgrade { page }).collect(),
        ToProcess::RecallRun { first, count } => pages(first, count).map(|(_, page)| ToProcess::Recall { page }).collect(),
        ToProcess::Forward { req, first, count, to } => {
            pages(first, count).map(|(_, page)| ToProcess::Forward { req, first: page, count: 1, to }).collect()
        }
        ToProcess::ForwardNote { req, first, count } => {
            pages(first, count).map(|(_, page)| ToProcess::ForwardNote { req, first: page, count: 1 }).collect()
        }
        ToProcess::ForwardAbort { req, first, count } => {
            pages(first, count).map(|(_, page)| ToProcess::ForwardAbort { req, first: page, count: 1 }).collect()
        }
        ToProcess::InvBackup { first, count } => pages(first, count).map(|(_, page)| ToProcess::InvBackup { first: page, count: 1 }).collect(),
        ToProcess::DropBackup { first, count } => pages(first, count).map(|(_, page)| ToProcess::DropBackup { first: page, count: 1 }).collect(),
        ToProcess::RestoreBackup { first, count } => {
            pages(first, count).map(|(_, page)| ToProcess::RestoreBackup { first: page, count: 1 }).collect()
        }
        other => vec![other],
    }
}

/// The per-page messages a run message to the coordinator stands for. `FetchRun`, `OwnRun`
/// and `Denied`-style conditional requests have no per-page form and are returned unchanged.
pub fn expand_to_coordinator(m: ToCoordinator) -> Vec<ToCoordinator> {
    let pages = |first: PageNo, count: u32| (0..count).map(move |i| (i, first + u64::from(i)));
    match m {
        ToCoordinator::InvalidateAckRun { first, count } => {
            pages(first, count).map(|(_, page)| ToCoordinator::InvalidateAck { page }).collect()
        }
        ToCoordinator::DowngradeAckRun { first, count, data } => pages(first, count)
            .map(|(i, page)| ToCoordinator::DowngradeAck { page, data: page_of(&data, i) })
            .collect(),
        ToCoordinator::RecallAckRun { first, count, data } => pages(first, count)
            .map(|(i, page)| ToCoordinator::RecallAck { page, data: page_of(&data, i) })
            .collect(),
        ToCoordinator::WritebackRun { first, count, data } => {
            let data = Some(data);
            pages(first, count)
                .map(|(i, page)| ToCoordinator::Writeback { page, data: page_of(&data, i).unwrap_or(PageData::from(Vec::new())) })
                .collect()
        }
        ToCoordinator::Got { first, count } => pages(first, count).map(|(_, page)| ToCoordinator::Got { first: page, count: 1 }).collect(),
        ToCoordinator::ForwardAborted { first, count } => {
            pages(first, count).map(|(_, page)| ToCoordinator::ForwardAborted { first: page, count: 1 }).collect()
        }
        ToCoordinator::ForwardReturn { req, to, first, count, data } => pages(first, count)
            .map(|(i, page)| ToCoordinator::ForwardReturn { req, to, first: page, count: 1, data: page_slice(&data, i) })
            .collect(),
        ToCoordinator::BackupAck { first, count, kept } => {
            pages(first, count).map(|(_, page)| ToCoordinator::BackupAck { first: page, count: 1, kept }).collect()
        }
        ToCoordinator::BackupData { first, count, data } => pages(first, count)
            .map(|(i, page)| ToCoordinator::BackupData { first: page, count: 1, data: page_slice(&data, i) })
            .collect(),
        ToCoordinator::BackupHome { first, count, data } => pages(first, count)
            .map(|(i, page)| ToCoordinator::BackupHome { first: page, count: 1, data: page_slice(&data, i) })
            .collect(),
        other => vec![other],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Mode;
    use proptest::prelude::*;

    fn filled(b: u8) -> PageData {
        PageData::from(vec![b; PAGE_SIZE])
    }

    /// A run's bytes are reserved once, for all the run takes: merging 300 pages (a full run
    /// and 45 more) ends with buffers of exactly their runs' sizes, not a doubled buffer's.
    #[test]
    fn a_run_reserves_its_bytes_once() {
        let msgs: Vec<ToProcess> = (0..300)
            .map(|p| ToProcess::Data { req: 1, page: p, data: Some(filled(p as u8)), mode: Mode::Invalidate })
            .collect();
        let out = coalesce_to_process(msgs);
        let sizes: Vec<(usize, usize)> = out
            .iter()
            .map(|m| match m {
                ToProcess::DataRun { data: Some(d), .. } => (d.len(), d.capacity()),
                other => panic!("not a data run: {other:?}"),
            })
            .collect();
        let full = MAX_RUN as usize * PAGE_SIZE;
        let rest = (300 - MAX_RUN as usize) * PAGE_SIZE;
        assert_eq!(sizes, vec![(full, full), (rest, rest)]);
    }

    #[test]
    fn consecutive_data_of_one_request_becomes_one_run() {
        let msgs: Vec<ToProcess> = (5..8)
            .map(|p| ToProcess::Data { req: 1, page: p, data: Some(filled(p as u8)), mode: Mode::Invalidate })
            .collect();
        let out = coalesce_to_process(msgs.clone());
        assert_eq!(out.len(), 1);
        match &out[0] {
            ToProcess::DataRun { req: 1, first: 5, count: 3, data: Some(d), mode: Mode::Invalidate } => {
                assert_eq!(d.len(), 3 * PAGE_SIZE);
                assert_eq!((d[0], d[PAGE_SIZE], d[2 * PAGE_SIZE]), (5, 6, 7));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(expand_to_process(out[0].clone()), msgs);
    }

    #[test]
    fn runs_split_at_gaps_other_requests_shapes_and_the_cap() {
        let d = |req, page, data: Option<PageData>| ToProcess::Data { req, page, data, mode: Mode::Invalidate };
        let msgs = vec![
            d(1, 0, None),
            d(1, 1, None),
            d(1, 3, None),             // gap
            d(2, 4, None),             // another request
            d(2, 5, Some(filled(1))),    // another shape
            ToProcess::Invalidate { page: 6 }, // another kind
            ToProcess::Invalidate { page: 7 },
        ];
        let out = coalesce_to_process(msgs.clone());
        assert_eq!(out.len(), 5, "{out:?}");
        let back: Vec<ToProcess> = out.into_iter().flat_map(expand_to_process).collect();
        assert_eq!(back, msgs);
        let many: Vec<ToProcess> = (0..(MAX_RUN as u64 + 3)).map(|p| ToProcess::Recall { page: p }).collect();
        let out = coalesce_to_process(many);
        assert_eq!(out, vec![ToProcess::RecallRun { first: 0, count: MAX_RUN }, ToProcess::RecallRun { first: MAX_RUN as u64, count: 3 }]);
    }

    #[test]
    fn forwards_merge_per_request_and_destination() {
        let f = |first, to| ToProcess::Forward { req: 4, first, count: 1, to };
        let msgs = vec![f(0, 1), f(1, 1), f(2, 2), ToProcess::ForwardNote { req: 4, first: 3, count: 1 }, ToProcess::ForwardNote { req: 4, first: 4, count: 1 }];
        let out = coalesce_to_process(msgs.clone());
        assert_eq!(
            out,
            vec![
                ToProcess::Forward { req: 4, first: 0, count: 2, to: 1 },
                f(2, 2),
                ToProcess::ForwardNote { req: 4, first: 3, count: 2 }
            ]
        );
        assert_eq!(out.into_iter().flat_map(expand_to_process).collect::<Vec<_>>(), msgs);
        let got = vec![ToCoordinator::Got { first: 7, count: 1 }, ToCoordinator::Got { first: 8, count: 1 }];
        assert_eq!(coalesce_to_coordinator(got), vec![ToCoordinator::Got { first: 7, count: 2 }]);
        let ret = |first, b| ToCoordinator::ForwardReturn { req: 3, to: 1, first, count: 1, data: filled(b) };
        let out = coalesce_to_coordinator(vec![ret(1, 1), ret(2, 2)]);
        match &out[..] {
            [ToCoordinator::ForwardReturn { first: 1, count: 2, data, .. }] => assert_eq!((data[0], data[PAGE_SIZE]), (1, 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backup_messages_merge_by_kind_and_kept() {
        let inv = |first| ToProcess::InvBackup { first, count: 1 };
        let drop = |first| ToProcess::DropBackup { first, count: 1 };
        let msgs = vec![inv(0), inv(1), drop(2), drop(3), ToProcess::RestoreBackup { first: 4, count: 1 }, ToProcess::RestoreBackup { first: 5, count: 1 }];
        let out = coalesce_to_process(msgs.clone());
        assert_eq!(
            out,
            vec![
                ToProcess::InvBackup { first: 0, count: 2 },
                ToProcess::DropBackup { first: 2, count: 2 },
                ToProcess::RestoreBackup { first: 4, count: 2 }
            ]
        );
        assert_eq!(out.into_iter().flat_map(expand_to_process).collect::<Vec<_>>(), msgs);
        let ack = |first, kept| ToCoordinator::BackupAck { first, count: 1, kept };
        let acks = vec![ack(0, true), ack(1, true), ack(2, false), ack(3, false), ack(4, true)];
        let out = coalesce_to_coordinator(acks.clone());
        assert_eq!(
            out,
            vec![
                ToCoordinator::BackupAck { first: 0, count: 2, kept: true },
                ToCoordinator::BackupAck { first: 2, count: 2, kept: false },
                ack(4, true)
            ]
        );
        assert_eq!(out.into_iter().flat_map(expand_to_coordinator).collect::<Vec<_>>(), acks);
        let data = |first, b| ToCoordinator::BackupData { first, count: 1, data: filled(b) };
        let home = |first, b| ToCoordinator::BackupHome { first, count: 1, data: filled(b) };
        let msgs = vec![data(1, 1), data(2, 2), home(3, 3), home(4, 4)];
        let out = coalesce_to_coordinator(msgs.clone());
        match &out[..] {
            [ToCoordinator::BackupData { first: 1, count: 2, data: d }, ToCoordinator::BackupHome { first: 3, count: 2, data: h }] => {
                assert_eq!((d[0], d[PAGE_SIZE], h[0], h[PAGE_SIZE]), (1, 2, 3, 4));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out.into_iter().flat_map(expand_to_coordinator).collect::<Vec<_>>(), msgs);
    }

    #[test]
    fn runs_are_checked() {
        assert!(check_run("x", 0, None).is_err());
        assert!(check_run("x", MAX_RUN + 1, None).is_err());
        assert!(check_run("x", 2, Some(PAGE_SIZE)).is_err());
        assert!(check_run("x", 2, Some(2 * PAGE_SIZE)).is_ok());
    }

    fn to_process() -> impl Strategy<Value = ToProcess> {
        let data = prop_oneof![Just(None), (0u8..3).prop_map(|b| Some(filled(b)))];
        let grant = prop_oneof![Just(None), Just(Some(GrantData::Zero)), (0u8..3).prop_map(|b| Some(GrantData::Bytes(filled(b))))];
        let pg = 0u64..12;
        prop_oneof![
            (0u64..3, pg.clone(), data).prop_map(|(req, page, data)| ToProcess::Data { req, page, data, mode: Mode::Invalidate }),
            (0u64..3, pg.clone(), grant).prop_map(|(req, page, data)| ToProcess::Grant { req, page, data }),
            pg.clone().prop_map(|page| ToProcess::Invalidate { page }),
            pg.clone().prop_map(|page| ToProcess::Downgrade { page }),
            pg.clone().prop_map(|page| ToProcess::Recall { page }),
            (0u64..3, pg.clone(), 0u32..2).prop_map(|(req, first, to)| ToProcess::Forward { req, first, count: 1, to }),
            (0u64..3, pg.clone()).prop_map(|(req, first)| ToProcess::ForwardNote { req, first, count: 1 }),
            (0u64..3, pg.clone()).prop_map(|(req, first)| ToProcess::ForwardAbort { req, first, count: 1 }),
            pg.clone().prop_map(|first| ToProcess::InvBackup { first, count: 1 }),
            pg.clone().prop_map(|first| ToProcess::DropBackup { first, count: 1 }),
            pg.prop_map(|first| ToProcess::RestoreBackup { first, count: 1 }),
            Just(ToProcess::Detached),
        ]
    }

    fn to_coordinator() -> impl Strategy<Value = ToCoordinator> {
        let data = prop_oneof![Just(None), (0u8..3).prop_map(|b| Some(filled(b)))];
        let pg = 0u64..12;
        prop_oneof![
            pg.clone().prop_map(|page| ToCoordinator::InvalidateAck { page }),
            (pg.clone(), data.clone()).prop_map(|(page, data)| ToCoordinator::DowngradeAck { page, data }),
            (pg.clone(), data).prop_map(|(page, data)| ToCoordinator::RecallAck { page, data }),
            (pg.clone(), 0u8..3).prop_map(|(page, b)| ToCoordinator::Writeback { page, data: filled(b) }),
            (0u64..3, pg.clone()).prop_map(|(req, page)| ToCoordinator::Fetch { req, page }),
            pg.clone().prop_map(|first| ToCoordinator::Got { first, count: 1 }),
            pg.clone().prop_map(|first| ToCoordinator::ForwardAborted { first, count: 1 }),
            (pg.clone(), 0u8..3, 0u32..2).prop_map(|(first, b, to)| ToCoordinator::ForwardReturn { req: 1, to, first, count: 1, data: filled(b) }),
            (pg.clone(), any::<bool>()).prop_map(|(first, kept)| ToCoordinator::BackupAck { first, count: 1, kept }),
            (pg.clone(), 0u8..3).prop_map(|(first, b)| ToCoordinator::BackupData { first, count: 1, data: filled(b) }),
            (pg, 0u8..3).prop_map(|(first, b)| ToCoordinator::BackupHome { first, count: 1, data: filled(b) }),
        ]
    }

    proptest! {
        #[test]
        fn coalescing_then_expanding_gives_back_the_same_messages(msgs in proptest::collection::vec(to_process(), 0..40)) {
            let runs = coalesce_to_process(msgs.clone());
            prop_assert!(runs.len() <= msgs.len());
            let back: Vec<ToProcess> = runs.into_iter().flat_map(expand_to_process).collect();
            prop_assert_eq!(back, msgs);
        }

        #[test]
        fn the_same_holds_towards_the_coordinator(msgs in proptest::collection::vec(to_coordinator(), 0..40)) {
            let runs = coalesce_to_coordinator(msgs.clone());
            let back: Vec<ToCoordinator> = runs.into_iter().flat_map(expand_to_coordinator).collect();
            prop_assert_eq!(back, msgs);
        }
    }
}
