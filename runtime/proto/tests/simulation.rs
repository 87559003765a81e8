//! Deterministic simulation of the coherence protocol (invalidate and update modes): several
//! single-threaded processes ([`ProcessPages`] + a simulated mapping implementing
//! [`PageMemory`]) run litmus programs against one [`PageDirectory`], connected by two FIFO
//! channels per process (P->C and C->P, ordering rule 2).
//!
//! A seeded `SmallRng` picks, at each step, one enabled action: a process executes its next
//! instruction (a load of an Invalid page or a store/RMW to a non-Writable page faults: the
//! process calls `handle_fault` and blocks until the page is installed/upgraded/woken, then
//! re-executes the instruction; when the fault answers `Replay` the process "decodes" the
//! instruction as a separate step, so coordinator messages can overtake the decoding (rule 6),
//! then calls `replay` and blocks until its write completes or is retried), the coordinator
//! consumes the head of one P->C channel, a process consumes the head of its C->P channel, or
//! (in some configurations, a bounded number of times) the coordinator switches a random page
//! to a random mode. A finished process may also write everything back (`release_all`) and, in
//! some runs, detach (the coordinator then calls `handle_leave` and drops the process's later
//! messages), which exercises the Writeback/Recall/Downgrade races.
//!
//! Every program runs under several [`Config`]s: the directory's default policy (Invalidate,
//! Update, Adaptive), per-page mixes set by `Advise` at start, with or without random switches.
//!
//! Checks: in every state, single-writer/multiple-readers (a Writable copy excludes every other
//! valid copy), no Writable copy of a page the directory has in update mode and no owner of
//! such a page, the ReadOnly copies of a page are equal as long as no Update/WriteAck for it was
//! ever sent (afterwards they legitimately differ while updates are in flight), no Update or
//! WriteAck reaches a copy that is not ReadOnly, and the core's page states match the mapping;
//! a bounded number of Retries and steps per run (no retry livelock); at quiescence, nothing is
//! in flight and nobody is stuck (deadlock), the directory matches the caches (owner holds the
//! only copy, readers hold copies equal to the home), and the outcome (registers + final memory)
//! is one of the outcomes of the program under sequential consistency, computed by enumerating
//! every interleaving on a single memory. A run depends only on its program, configuration and
//! seed: a failure reports all three and the tail of the trace, and replays identically.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use dsm_proto::pages::{FaultAction, ReplayOp, WriteOutcome};
use dsm_proto::{
    Access, Coherence, Mode, PageDirectory, PageMemory, PageNo, PageState, ProcessPages, ReqId,
    RmwOp, ToCoordinator, ToPeer, ToProcess,
};
use rand::{rngs::SmallRng, Rng, SeedableRng};

/// Simulated page size: the directory sizes home copies it writes to `PAGE_SIZE`. Programs use
/// the first two words.
const PAGE_BYTES: usize = dsm_proto::PAGE_SIZE;
/// Seeds per program and configuration.
const SEEDS: u64 = 2000;
/// Replayed writes answered Retry in one run beyond which the run counts as a retry livelock.
const MAX_RETRIES: u32 = 12;
/// Steps after which a run that has not finished counts as a livelock.
const MAX_STEPS: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Addr {
    page: PageNo,
    word: usize,
}

const fn at(page: PageNo, word: usize) -> Addr {
    Addr { page, word }
}

#[derive(Debug, Clone, Copy)]
enum Instr {
    /// Store a value.
    St(Addr, u64),
    /// Load into a register.
    Ld(Addr, usize),
    /// Atomic fetch-and-add of 1 (`lock xadd`), the old value into a register.
    Faa(Addr, usize),
}
use Instr::{Faa, Ld, St};

impl Instr {
    fn addr(self) -> Addr {
        match self {
            St(a, _) | Ld(a, _) | Faa(a, _) => a,
        }
    }
}

struct Program {
    name: &'static str,
    pages: u64,
    procs: Vec<Vec<Instr>>,
}

impl Program {
    fn addrs(&self) -> BTreeSet<Addr> {
        self.procs.iter().flatten().map(|i| i.addr()).collect()
    }

    fn nregs(&self, p: usize) -> usize {
        self.procs[p]
            .iter()
            .filter_map(|i| match i {
                Ld(_, r) | Faa(_, r) => Some(r + 1),
                St(..) => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// Registers of every process, then the final value of every address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Outcome {
    regs: Vec<Vec<u64>>,
    mem: BTreeMap<Addr, u64>,
}

/// Every outcome of `prog` under sequential consistency (all interleavings, one memory).
fn sc_outcomes(prog: &Program) -> BTreeSet<Outcome> {
    fn go(
        prog: &Program,
        pcs: &mut Vec<usize>,
        mem: &mut BTreeMap<Addr, u64>,
        regs: &mut Vec<Vec<u64>>,
        acc: &mut BTreeSet<Outcome>,
    ) {
        let mut any = false;
        for p in 0..prog.procs.len() {
            let Some(&ins) = prog.procs[p].get(pcs[p]) else { continue };
            any = true;
            pcs[p] += 1;
            match ins {
                St(a, v) => {
                    let old = mem.insert(a, v);
                    go(prog, pcs, mem, regs, acc);
                    mem.insert(a, old.unwrap_or(0));
                }
                Ld(a, r) => {
                    let old = regs[p][r];
                    regs[p][r] = mem[&a];
                    go(prog, pcs, mem, regs, acc);
                    regs[p][r] = old;
                }
                Faa(a, r) => {
                    let (old_reg, old_mem) = (regs[p][r], mem[&a]);
                    regs[p][r] = old_mem;
                    mem.insert(a, old_mem + 1);
                    go(prog, pcs, mem, regs, acc);
                    mem.insert(a, old_mem);
                    regs[p][r] = old_reg;
                }
            }
            pcs[p] -= 1;
        }
        if !any {
            acc.insert(Outcome { regs: regs.clone(), mem: mem.clone() });
        }
    }
    let mut mem = prog.addrs().into_iter().map(|a| (a, 0)).collect();
    let mut regs = (0..prog.procs.len()).map(|p| vec![0; prog.nregs(p)]).collect();
    let mut acc = BTreeSet::new();
    go(prog, &mut vec![0; prog.procs.len()], &mut mem, &mut regs, &mut acc);
    acc
}

/// One process's mapping: per page its state and bytes. Records protocol misuse instead of
/// panicking so the failing seed can be reported.
#[derive(Default)]
struct SimMem {
    pages: HashMap<PageNo, (PageState, Vec<u8>)>,
    /// The page the (single) thread is blocked on.
    waiting: Option<PageNo>,
    errors: Vec<String>,
    /// Backups are kept in place (as the runtime's mapping does), not handed to the core.
    shelve_in_place: bool,
    /// Their bytes, by page (the page itself is Invalid).
    shelved: HashMap<PageNo, Vec<u8>>,
}

impl SimMem {
    fn state(&self, page: PageNo) -> PageState {
        self.pages.get(&page).map_or(PageState::Invalid, |p| p.0)
    }

    fn wake_if(&mut self, page: PageNo) {
        if self.waiting == Some(page) {
            self.waiting = None;
        }
    }

    fn expect(&mut self, page: PageNo, ok: &[PageState], what: &str) -> bool {
        let s = self.state(page);
        if ok.contains(&s) {
            true
        } else {
            self.errors.push(format!("{what} on page {page} in state {s:?}"));
            false
        }
    }

    fn read(&self, a: Addr) -> u64 {
        let bytes = &self.pages[&a.page].1;
        u64::from_le_bytes(bytes[a.word * 8..a.word * 8 + 8].try_into().unwrap())
    }

    fn write(&mut self, a: Addr, v: u64) {
        let bytes = &mut self.pages.get_mut(&a.page).unwrap().1;
        bytes[a.word * 8..a.word * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
}

impl PageMemory for SimMem {
    fn install(&mut self, page: PageNo, data: Option<&[u8]>, writable: bool) {
        if self.shelved.contains_key(&page) {
            self.errors.push(format!("install on page {page}, whose backup is kept in place (not evicted first)"));
        }
        if self.expect(page, &[PageState::Invalid], "install") {
            let bytes = data.map_or(vec![0; PAGE_BYTES], <[u8]>::to_vec);
            if bytes.len() != PAGE_BYTES {
                self.errors.push(format!("install of {} bytes on page {page}", bytes.len()));
            }
            let state = if writable { PageState::Writable } else { PageState::ReadOnly };
            self.pages.insert(page, (state, bytes));
        }
        self.wake_if(page);
    }

    fn make_writable(&mut self, page: PageNo) {
        if self.expect(page, &[PageState::ReadOnly], "make_writable") {
            self.pages.get_mut(&page).unwrap().0 = PageState::Writable;
        }
        self.wake_if(page);
    }

    fn write_protect(&mut self, page: PageNo) -> Vec<u8> {
        if self.expect(page, &[PageState::Writable], "write_protect") {
            let p = self.pages.get_mut(&page).unwrap();
            p.0 = PageState::ReadOnly;
            p.1.clone()
        } else {
            vec![0; PAGE_BYTES]
        }
    }

    fn drop_page(&mut self, page: PageNo, want_contents: bool) -> Option<Vec<u8>> {
        self.expect(page, &[PageState::ReadOnly, PageState::Writable], "drop_page");
        let old = self.pages.remove(&page);
        if want_contents {
            Some(old.map_or(vec![0; PAGE_BYTES], |p| p.1))
        } else {
            None
        }
    }

    fn wake(&mut self, page: PageNo) {
        self.wake_if(page);
    }

    fn shelve_run(&mut self, first: PageNo, count: u32) -> Option<Vec<u8>> {
        if !self.shelve_in_place {
            let bytes = self.read_run(first, count);
            self.drop_run(first, count, false);
            return Some(bytes);
        }
        for page in first..first + u64::from(count) {
            if self.expect(page, &[PageState::ReadOnly], "shelve_run") {
                let (_, bytes) = self.pages.remove(&page).unwrap();
                self.shelved.insert(page, bytes);
            }
        }
        None
    }

    fn unshelve_run(&mut self, first: PageNo, count: u32, read: bool) -> Option<Vec<u8>> {
        let mut all = Vec::with_capacity(count as usize * PAGE_BYTES);
        for page in first..first + u64::from(count) {
            match self.shelved.remove(&page) {
                Some(bytes) => all.extend_from_slice(&bytes),
                None => {
                    self.errors.push(format!("unshelve_run on page {page}, which has no backup in place"));
                    all.extend_from_slice(&[0; PAGE_BYTES]);
                }
            }
        }
        read.then_some(all)
    }

    fn read_run(&mut self, first: PageNo, count: u32) -> Vec<u8> {
        let mut all = Vec::with_capacity(count as usize * PAGE_BYTES);
        for page in first..first + u64::from(count) {
            if self.expect(page, &[PageState::ReadOnly], "read_run") {
                all.extend_from_slice(&self.pages[&page].1);
            } else {
                all.extend_from_slice(&[0; PAGE_BYTES]);
            }
        }
        all
    }

    fn store(&mut self, page: PageNo, offset: u16, width: u8, value: u128) {
        if self.expect(page, &[PageState::ReadOnly], "store") {
            let (o, w) = (usize::from(offset), usize::from(width));
            let bytes = &mut self.pages.get_mut(&page).unwrap().1;
            if o + w > bytes.len() || !matches!(w, 1 | 2 | 4 | 8 | 16) {
                self.errors.push(format!("store of {w} bytes at {o} on page {page}"));
                return;
            }
            bytes[o..o + w].copy_from_slice(&value.to_le_bytes()[..w]);
        }
    }
}

/// What the (single) thread of a process is doing besides running or waiting for a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    No,
    /// The store faulted with `Replay`: its next step decodes and replays the instruction.
    Decode,
    /// Waiting for the completion of this replayed write.
    Write(ReqId),
}

struct Proc {
    prog: Vec<Instr>,
    pc: usize,
    regs: Vec<u64>,
    pages: ProcessPages,
    mem: SimMem,
    blocked: Blocked,
    to_c: VecDeque<ToCoordinator>,
    from_c: VecDeque<ToProcess>,
    released: bool,
    /// The coordinator processed its Detach (or it was lost): it no longer exists.
    gone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Exec(usize),
    Deliver(usize),
    Recv(usize),
    /// The head of the peer channel from the first process to the second arrives.
    PeerRecv(usize, usize),
    /// ... or cannot be delivered: the sender gets it back (`peer_failed`).
    PeerFail(usize, usize),
    Release(usize),
    /// The coordinator switches a page (chosen when the action is picked).
    Switch(PageNo, Mode),
    /// A process sends `Advise` for one page (counts as a switch).
    Advise(usize, PageNo, Coherence),
}

#[derive(Debug, Clone, Copy)]
struct Opts {
    /// A finished process may write its pages back.
    release: bool,
    /// ... and then detach.
    detach: bool,
    /// Adjacent messages on a channel are merged into run messages (`dsm_proto::runs`), as the
    /// runtime and the coordinator do; off, every page travels alone.
    runs: bool,
}

/// The coherence configuration of a run.
#[derive(Debug, Clone, Copy)]
struct Config {
    name: &'static str,
    /// The directory's default policy.
    default: Coherence,
    /// `Advise` of one page each, sent by P0 before anything runs.
    advise: &'static [(PageNo, Coherence)],
    /// Random `request_switch` calls the scheduler may make.
    switches: u32,
    /// Direct transfers: the directory forwards, and the processes talk on peer channels
    /// (one FIFO channel per ordered pair), some of whose messages fail to arrive.
    forwards: bool,
}

const fn config(
    name: &'static str,
    default: Coherence,
    advise: &'static [(PageNo, Coherence)],
    switches: u32,
) -> Config {
    Config { name, default, advise, switches, forwards: false }
}

const fn with_forwards(c: Config) -> Config {
    Config { forwards: true, ..c }
}

/// Peer messages that may fail to arrive in one run (forward configurations).
const PEER_FAILURES: u32 = 2;

const INVALIDATE: Config = config("invalidate", Coherence::Invalidate, &[], 0);

/// Every configuration each litmus program runs under. With switches, the scheduler may also
/// have a process send an `Advise` for one page mid-run (a third of the switches).
const CONFIGS: &[Config] = &[
    INVALIDATE,
    config("update", Coherence::Update, &[], 0),
    config("adaptive", Coherence::Adaptive, &[], 0),
    config("page0 U, page1 I", Coherence::Invalidate, &[(0, Coherence::Update)], 0),
    config("page0 I, page1 U", Coherence::Update, &[(0, Coherence::Invalidate)], 0),
    config("page0 A, page1 U", Coherence::Adaptive, &[(1, Coherence::Update)], 0),
    config("invalidate + switches", Coherence::Invalidate, &[], 4),
    config("update + switches", Coherence::Update, &[], 4),
    config("adaptive + switches", Coherence::Adaptive, &[(0, Coherence::Update)], 4),
    with_forwards(config("invalidate + forwards", Coherence::Invalidate, &[], 0)),
    with_forwards(config("adaptive + switches + forwards", Coherence::Adaptive, &[(0, Coherence::Update)], 4)),
];

/// One decoded store in 8 is an instruction the decoder does not support: the process takes
/// `handle_fault_by_ownership` instead of replaying it.
struct Fallback(SmallRng);

impl Fallback {
    fn next(&mut self) -> bool {
        self.0.gen_ratio(1, 8)
    }
}

struct Sim {
    dir: PageDirectory,
    procs: Vec<Proc>,
    pages: u64,
    opts: Opts,
    switches_left: u32,
    retries: u32,
    /// Decides which decoded stores the (simulated) decoder cannot replay.
    fallback: Fallback,
    /// Per page: an Update or WriteAck was ever sent (ReadOnly copies may then differ while
    /// updates are in flight).
    updated: Vec<bool>,
    /// Peer channels, by (sender, receiver).
    peers: BTreeMap<(usize, usize), VecDeque<ToPeer>>,
    peer_failures_left: u32,
    trace: Option<Vec<String>>,
}

impl Sim {
    fn new(prog: &Program, cfg: Config, opts: Opts, trace: bool) -> Self {
        let procs = prog
            .procs
            .iter()
            .enumerate()
            .map(|(p, code)| Proc {
                prog: code.clone(),
                pc: 0,
                regs: vec![0; prog.nregs(p)],
                // Read-ahead on: prefetched copies must not break SC either.
                pages: ProcessPages::new().with_read_ahead(prog.pages).with_write_ahead(prog.pages),
                // Backups kept in place by every other process, handed to the core by the rest.
                mem: SimMem { shelve_in_place: p % 2 == 0, ..SimMem::default() },
                blocked: Blocked::No,
                to_c: VecDeque::new(),
                from_c: VecDeque::new(),
                released: false,
                gone: false,
            })
            .collect::<Vec<_>>();
        let mut dir = PageDirectory::new(procs.len() as u32, prog.pages)
            .with_default_policy(cfg.default)
            .with_forwards(cfg.forwards);
        let mut out = Vec::new();
        if cfg.default == Coherence::Update {
            // What a real session does to get this default: P0 advises the whole region, and
            // every process hears the advice before it runs (it precedes the start barrier).
            for r in 0..procs.len() as u32 {
                out.push((r, ToProcess::Advice { first: 0, count: prog.pages, coherence: Coherence::Update }));
            }
        }
        for &(first, coherence) in cfg.advise.iter().filter(|(first, _)| *first < prog.pages) {
            dir.handle(0, ToCoordinator::Advise { first, count: 1, coherence }, &mut out)
                .expect("advise");
        }
        let mut sim = Sim {
            dir,
            procs,
            pages: prog.pages,
            opts,
            switches_left: cfg.switches,
            retries: 0,
            fallback: Fallback(SmallRng::seed_from_u64(0)),
            updated: vec![false; prog.pages as usize],
            peers: BTreeMap::new(),
            peer_failures_left: if cfg.forwards { PEER_FAILURES } else { 0 },
            trace: trace.then(Vec::new),
        };
        sim.log(|| format!("C advise {:?} -> {out:?}", cfg.advise));
        sim.route(out);
        sim
    }

    fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(f());
        }
    }

    fn enabled(&self) -> Vec<Action> {
        let mut v = Vec::new();
        for (i, p) in self.procs.iter().enumerate() {
            if p.gone {
                continue;
            }
            let runnable = matches!(p.blocked, Blocked::No | Blocked::Decode);
            if p.pc < p.prog.len() && p.mem.waiting.is_none() && runnable {
                v.push(Action::Exec(i));
            }
            if !p.to_c.is_empty() {
                v.push(Action::Deliver(i));
            }
            if !p.from_c.is_empty() {
                v.push(Action::Recv(i));
            }
            if self.opts.release && !p.released && p.pc == p.prog.len() && p.pages.is_idle() {
                v.push(Action::Release(i));
            }
        }
        for (&(from, to), ch) in &self.peers {
            if !ch.is_empty() {
                v.push(Action::PeerRecv(from, to));
                if self.peer_failures_left > 0 && !self.procs[from].gone {
                    v.push(Action::PeerFail(from, to));
                }
            }
        }
        if self.switches_left > 0 {
            // Placeholder: `simulate` picks the page and the mode.
            v.push(Action::Switch(0, Mode::Update));
        }
        v
    }

    fn step(&mut self, action: Action) -> Result<(), String> {
        match action {
            Action::Exec(i) => self.exec(i),
            Action::Deliver(i) => self.deliver(i)?,
            Action::Recv(i) => self.recv(i)?,
            Action::PeerRecv(from, to) => self.peer_recv(from, to, false)?,
            Action::PeerFail(from, to) => self.peer_recv(from, to, true)?,
            Action::Release(i) => {
                let p = &mut self.procs[i];
                let mut out = Vec::new();
                let n = p.pages.release_all(&mut p.mem, &mut out);
                p.released = true;
                push_to_coordinator(&mut p.to_c, out, self.opts.runs);
                if self.opts.detach {
                    p.to_c.push_back(ToCoordinator::Detach);
                }
                self.log(|| format!("P{i} release_all: {n} written back"));
            }
            Action::Advise(i, first, coherence) => {
                self.switches_left = self.switches_left.saturating_sub(1);
                self.procs[i].to_c.push_back(ToCoordinator::Advise { first, count: 1, coherence });
                self.log(|| format!("P{i} advises page {first} {coherence:?}"));
            }
            Action::Switch(page, to) => {
                self.switches_left = self.switches_left.saturating_sub(1);
                let mut out = Vec::new();
                self.dir.request_switch(page, to, &mut out);
                self.log(|| format!("C switch page {page} to {to:?} -> {out:?}"));
                self.route(out);
            }
        }
        self.check_step()
    }

    fn exec(&mut self, i: usize) {
        let p = &mut self.procs[i];
        let ins = p.prog[p.pc];
        let addr = ins.addr();
        if p.blocked == Blocked::Decode && self.fallback.next() {
            // The decoder does not support the instruction: ownership whatever the mode.
            p.blocked = Blocked::No;
            p.mem.waiting = Some(addr.page);
            let mut out = Vec::new();
            p.pages.handle_fault_by_ownership(addr.page, &mut p.mem, &mut out);
            push_to_coordinator(&mut p.to_c, out.iter().cloned(), self.opts.runs);
            self.log(|| format!("P{i} {ins:?} cannot be replayed -> {out:?}"));
            return;
        }
        if p.blocked == Blocked::Decode {
            // The faulting store/RMW was decoded: replay it (unless the copy is gone, rule 6).
            let offset = (addr.word * 8) as u16;
            let op = match ins {
                St(_, value) => ReplayOp::Store { offset, width: 8, value: u128::from(value) },
                // Both encodings of a fetch-and-add: the directory returns the old value.
                _ => {
                    let op = if (i + p.pc).is_multiple_of(2) { RmwOp::Xadd } else { RmwOp::Add };
                    ReplayOp::Rmw { offset, width: 8, op, operand: 1, expected: 0 }
                }
            };
            let mut out = Vec::new();
            let req = p.pages.replay(addr.page, op, &mut out);
            p.blocked = req.map_or(Blocked::No, Blocked::Write);
            push_to_coordinator(&mut p.to_c, out.iter().cloned(), self.opts.runs);
            self.log(|| format!("P{i} {ins:?} replays {op:?} -> {req:?} {out:?}"));
            return;
        }
        let access = match ins {
            Ld(..) => Access::Read,
            St(..) | Faa(..) => Access::Write,
        };
        let state = p.mem.state(addr.page);
        let ok = match access {
            Access::Read => state != PageState::Invalid,
            Access::Write => state == PageState::Writable,
        };
        if !ok {
            p.mem.waiting = Some(addr.page);
            let mut out = Vec::new();
            let action = p.pages.handle_fault(addr.page, access, &mut p.mem, &mut out);
            if action == FaultAction::Replay {
                p.mem.waiting = None;
                p.blocked = Blocked::Decode;
            }
            push_to_coordinator(&mut p.to_c, out.iter().cloned(), self.opts.runs);
            self.log(|| format!("P{i} {ins:?} faults ({state:?}) -> {action:?} {out:?}"));
            return;
        }
        let value = match ins {
            St(a, v) => {
                p.mem.write(a, v);
                None
            }
            Ld(a, r) => {
                p.regs[r] = p.mem.read(a);
                Some(p.regs[r])
            }
            Faa(a, r) => {
                let old = p.mem.read(a);
                p.mem.write(a, old + 1);
                p.regs[r] = old;
                Some(old)
            }
        };
        p.pc += 1;
        self.log(|| format!("P{i} {ins:?} done {value:?}"));
    }

    fn deliver(&mut self, i: usize) -> Result<(), String> {
        let Some(msg) = self.procs[i].to_c.pop_front() else { return Ok(()) };
        if msg == ToCoordinator::Detach {
            self.log(|| format!("C <- P{i} Detach"));
            self.leave(i);
            return Ok(());
        }
        let mut out = Vec::new();
        let text = self.trace.is_some().then(|| format!("{msg:?}"));
        self.dir.handle(i as u32, msg, &mut out).map_err(|e| format!("directory error: {e}"))?;
        self.log(|| format!("C <- P{i} {} -> {out:?}", text.unwrap_or_default()));
        self.route(out);
        Ok(())
    }

    /// The head of the peer channel `from` -> `to` arrives at `to` (whose core may install it
    /// and send `Got`), or, when `fail` is set or `to` is gone, goes back to `from`
    /// (`peer_failed`: a `ForwardReturn`).
    fn peer_recv(&mut self, from: usize, to: usize, fail: bool) -> Result<(), String> {
        let Some(msg) = self.peers.get_mut(&(from, to)).and_then(VecDeque::pop_front) else { return Ok(()) };
        let text = self.trace.is_some().then(|| format!("{msg:?}"));
        let mut out = Vec::new();
        if fail || self.procs[to].gone {
            if fail {
                self.peer_failures_left -= 1;
            }
            let p = &mut self.procs[from];
            if p.gone {
                return Ok(());
            }
            p.pages.peer_failed(to as u32, msg, &mut out);
            push_to_coordinator(&mut p.to_c, out.iter().cloned(), self.opts.runs);
            self.log(|| format!("P{from} -> P{to} undelivered {} -> {out:?}", text.unwrap_or_default()));
            return Ok(());
        }
        let p = &mut self.procs[to];
        p.pages
            .handle_peer(from as u32, msg, &mut p.mem, &mut out)
            .map_err(|e| format!("P{to} protocol error from peer P{from}: {e}"))?;
        push_to_coordinator(&mut p.to_c, out.iter().cloned(), self.opts.runs);
        self.log(|| format!("P{to} <- P{from} {} -> {out:?}", text.unwrap_or_default()));
        Ok(())
    }

    /// The process is gone (detached or lost): the directory forgets it, its channels die.
    fn leave(&mut self, i: usize) {
        let p = &mut self.procs[i];
        p.gone = true;
        p.to_c.clear();
        p.from_c.clear();
        let mut out = Vec::new();
        self.dir.handle_leave(i as u32, &mut out);
        self.log(|| format!("C leave P{i} -> {out:?}"));
        self.route(out);
    }

    fn route(&mut self, out: Vec<(u32, ToProcess)>) {
        for (to, m) in out {
            if let ToProcess::Update { page, .. } | ToProcess::WriteAck { page, .. } = m {
                if let Some(u) = self.updated.get_mut(page as usize) {
                    *u = true;
                }
            }
            let runs = self.opts.runs;
            let p = &mut self.procs[to as usize];
            if !p.gone {
                push_to_process(&mut p.from_c, m, runs);
            }
        }
    }

    fn recv(&mut self, i: usize) -> Result<(), String> {
        let p = &mut self.procs[i];
        let Some(msg) = p.from_c.pop_front() else { return Ok(()) };
        // An Update/WriteAck is sent only to readers, and any later Invalidate/Grant follows
        // it on the same stream: it must find the ReadOnly copy (or, for an Update, no copy if
        // the process dropped it silently in release_all and is still listed as a reader).
        if let ToProcess::Update { page, .. } | ToProcess::WriteAck { page, .. } = msg {
            let s = p.mem.state(page);
            let released = p.released && matches!(msg, ToProcess::Update { .. });
            if s != PageState::ReadOnly && !(s == PageState::Invalid && released) {
                return Err(format!("P{i}: {msg:?} reaches a copy in state {s:?}"));
            }
        }
        let text = self.trace.is_some().then(|| format!("{msg:?}"));
        let mut out = Vec::new();
        p.pages
            .handle_message(msg, &mut p.mem, &mut out)
            .map_err(|e| format!("P{i} protocol error: {e}"))?;
        push_to_coordinator(&mut p.to_c, out.iter().cloned(), self.opts.runs);
        let sent = p.pages.take_peer_messages();
        for (to, m) in &sent {
            self.peers.entry((i, *to as usize)).or_default().push_back(m.clone());
        }
        let p = &mut self.procs[i];
        let mut done = Vec::new();
        for (req, outcome) in p.pages.take_completions() {
            if p.blocked != Blocked::Write(req) {
                return Err(format!("P{i}: completion of write {req}, thread is {:?}", p.blocked));
            }
            p.blocked = Blocked::No;
            let ins = p.prog[p.pc];
            match outcome {
                WriteOutcome::Retry => {
                    // Re-execute: the store faults again and takes the ownership path.
                    self.retries += 1;
                    done.push(format!("{ins:?} retried"));
                }
                WriteOutcome::Done { old } => {
                    // The WriteAck applied the store to our copy before completing it.
                    let a = ins.addr();
                    let (expect, reg) = match ins {
                        St(_, v) => (v, None),
                        Faa(_, r) => (old + 1, Some(r)),
                        Ld(..) => return Err(format!("P{i}: write completion for a load")),
                    };
                    if p.mem.state(a.page) == PageState::ReadOnly && p.mem.read(a) != expect {
                        return Err(format!(
                            "P{i} {ins:?} completed but its copy holds {}",
                            p.mem.read(a)
                        ));
                    }
                    if let Some(r) = reg {
                        p.regs[r] = old;
                    }
                    p.pc += 1;
                    done.push(format!("{ins:?} done (old {old})"));
                }
            }
        }
        self.log(|| format!("P{i} <- {} -> {out:?} {done:?}", text.unwrap_or_default()));
        if self.retries > MAX_RETRIES {
            return Err(format!("retry livelock: {} Retries", self.retries));
        }
        Ok(())
    }

    /// Invariants of every state.
    fn check_step(&self) -> Result<(), String> {
        for (i, p) in self.procs.iter().enumerate() {
            if let Some(e) = p.mem.errors.first() {
                return Err(format!("P{i} mapping misuse: {e}"));
            }
        }
        for page in 0..self.pages {
            let view = self.dir.inspect(page);
            if view.mode == Mode::Update && view.owner.is_some() {
                return Err(format!("page {page} in update mode has an owner: {view:?}"));
            }
            let mut writers = 0;
            let mut valid = 0;
            let mut ro: Option<&Vec<u8>> = None;
            for (i, p) in self.procs.iter().enumerate() {
                if p.gone {
                    continue;
                }
                let s = p.mem.state(page);
                if s != p.pages.state(page) {
                    return Err(format!(
                        "P{i} page {page}: core says {:?}, mapping is {s:?}",
                        p.pages.state(page)
                    ));
                }
                match s {
                    PageState::Invalid => {}
                    PageState::Writable => {
                        if view.mode == Mode::Update {
                            return Err(format!(
                                "P{i} holds page {page} Writable in update mode: {view:?}"
                            ));
                        }
                        writers += 1;
                        valid += 1;
                    }
                    PageState::ReadOnly => {
                        valid += 1;
                        let bytes = &p.mem.pages[&page].1;
                        if !self.updated[page as usize] && ro.is_some_and(|b| b != bytes) {
                            return Err(format!("page {page}: ReadOnly copies differ"));
                        }
                        ro = Some(bytes);
                    }
                }
            }
            if writers > 1 || (writers == 1 && valid > 1) {
                return Err(format!(
                    "SWMR violated on page {page}: {writers} writers, {valid} valid copies"
                ));
            }
        }
        Ok(())
    }

    /// Quiescence: checks that everything finished and is coherent, returns the outcome.
    fn finish(&self, prog: &Program) -> Result<Outcome, String> {
        for (i, p) in self.procs.iter().enumerate() {
            if p.pc < p.prog.len() {
                return Err(format!(
                    "deadlock: P{i} stuck at instruction {} ({:?}, waiting {:?})",
                    p.pc, p.blocked, p.mem.waiting
                ));
            }
            if !p.gone && (!p.pages.is_idle() || !p.to_c.is_empty() || !p.from_c.is_empty()) {
                return Err(format!("P{i} not quiescent"));
            }
        }
        let zero = vec![0u8; PAGE_BYTES];
        let mut contents = HashMap::new();
        for page in 0..self.pages {
            let v = self.dir.inspect(page);
            if v.busy || v.queued > 0 {
                return Err(format!("page {page} still busy: {v:?}"));
            }
            let mut home = v.home.clone().unwrap_or_else(|| zero.clone());
            if home.len() < PAGE_BYTES {
                // A Writeback of a short page (the directory stores what it gets).
                return Err(format!("page {page}: home copy of {} bytes", home.len()));
            }
            home.truncate(PAGE_BYTES);
            // Backups (E1-E4): exactly the directory's holders keep one, and none is left where
            // the home is all there is.
            let holders: Vec<u32> =
                (0..self.procs.len()).filter(|&i| !self.procs[i].gone && self.procs[i].pages.has_backup(page)).map(|i| i as u32).collect();
            if holders != v.backups {
                return Err(format!("page {page}: backups kept by {holders:?}, directory lists {:?}", v.backups));
            }
            for (i, p) in self.procs.iter().enumerate() {
                if !p.gone && p.mem.shelved.contains_key(&page) && !p.pages.has_backup(page) {
                    return Err(format!("page {page}: P{i} keeps bytes in place for a backup it no longer has"));
                }
            }
            if !v.backups.is_empty() && v.owner.is_none() && !v.stale {
                return Err(format!("page {page}: backups left while the home is current: {v:?}"));
            }
            let current = match v.owner {
                Some(o) => {
                    let p = &self.procs[o as usize];
                    if p.gone || p.mem.state(page) != PageState::Writable {
                        return Err(format!("page {page}: owner P{o} has no Writable copy"));
                    }
                    p.mem.pages[&page].1.clone()
                }
                // The readers hold the current contents (a forward left the home behind).
                None if v.stale => {
                    let holder = v.readers.iter().map(|&r| &self.procs[r as usize]).find(|p| {
                        !p.gone && p.mem.state(page) == PageState::ReadOnly
                    });
                    match holder {
                        Some(p) => p.mem.pages[&page].1.clone(),
                        None => return Err(format!("page {page} is stale but no reader holds it: {v:?}")),
                    }
                }
                None => home,
            };
            for (i, p) in self.procs.iter().enumerate() {
                if p.gone {
                    continue;
                }
                let listed = v.owner == Some(i as u32) || v.readers.contains(&(i as u32));
                match p.mem.state(page) {
                    // release_all drops ReadOnly copies silently (there is no message for it):
                    // a stale reader entry is harmless, its next Invalidate is acknowledged.
                    PageState::Invalid if listed && !(p.released && v.owner.is_none()) => {
                        return Err(format!("page {page}: directory lists P{i}, which has no copy"))
                    }
                    PageState::Invalid => {}
                    _ if !listed => {
                        return Err(format!("page {page}: P{i} holds an unlisted copy"))
                    }
                    _ if p.mem.pages[&page].1 != current => {
                        return Err(format!(
                            "page {page}: P{i}'s copy differs from the current one"
                        ))
                    }
                    _ => {}
                }
            }
            contents.insert(page, current);
        }
        let mem = prog
            .addrs()
            .into_iter()
            .map(|a| {
                let b = &contents[&a.page][a.word * 8..a.word * 8 + 8];
                (a, u64::from_le_bytes(b.try_into().unwrap()))
            })
            .collect();
        Ok(Outcome { regs: self.procs.iter().map(|p| p.regs.clone()).collect(), mem })
    }
}

fn opts_for(seed: u64) -> Opts {
    let runs = (seed / 3).is_multiple_of(2);
    match seed % 3 {
        0 => Opts { release: false, detach: false, runs },
        1 => Opts { release: true, detach: false, runs },
        _ => Opts { release: true, detach: true, runs },
    }
}

/// Appends `m` to a channel, merged into the message at its tail when they form a run.
fn push_to_process(ch: &mut VecDeque<ToProcess>, m: ToProcess, runs: bool) {
    if runs {
        if let Some(last) = ch.pop_back() {
            ch.extend(dsm_proto::runs::coalesce_to_process(vec![last, m]));
            return;
        }
    }
    ch.push_back(m);
}

/// The same towards the coordinator.
fn push_to_coordinator(ch: &mut VecDeque<ToCoordinator>, msgs: impl IntoIterator<Item = ToCoordinator>, runs: bool) {
    for m in msgs {
        if runs {
            if let Some(last) = ch.pop_back() {
                ch.extend(dsm_proto::runs::coalesce_to_coordinator(vec![last, m]));
                continue;
            }
        }
        ch.push_back(m);
    }
}

/// What a run did, for the coverage assertions.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    runs: u64,
    replayed_writes: u64,
    updates: u64,
    retries: u64,
    grants: u64,
    to_update: u64,
    to_invalidate: u64,
    /// Write-ahead pages granted / denied by the directory.
    ahead_granted: u64,
    ahead_denied: u64,
    /// Run messages the processes received.
    runs_received: u64,
    /// Ordinary ownership requests on update-mode pages answered read-only (rule 3').
    owns_kept_in_update: u64,
    /// Direct transfers: pages forwarded, forwards aborted, stale pages flushed.
    forwards: u64,
    forward_aborts: u64,
    flushes: u64,
    /// Backup copies: readers told to keep one, released, sent home at a detach.
    backup_invalidations: u64,
    backups_released: u64,
    backups_home: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.runs += o.runs;
        self.replayed_writes += o.replayed_writes;
        self.updates += o.updates;
        self.retries += o.retries;
        self.grants += o.grants;
        self.to_update += o.to_update;
        self.to_invalidate += o.to_invalidate;
        self.ahead_granted += o.ahead_granted;
        self.ahead_denied += o.ahead_denied;
        self.runs_received += o.runs_received;
        self.owns_kept_in_update += o.owns_kept_in_update;
        self.forwards += o.forwards;
        self.forward_aborts += o.forward_aborts;
        self.flushes += o.flushes;
        self.backup_invalidations += o.backup_invalidations;
        self.backups_released += o.backups_released;
        self.backups_home += o.backups_home;
    }
}

struct Run {
    result: Result<Outcome, String>,
    trace: Vec<String>,
    totals: Totals,
}

/// Runs `prog` under `cfg` and `seed`; returns the outcome (or the failure) and the trace if
/// asked.
fn simulate(prog: &Program, cfg: Config, seed: u64, trace: bool) -> Run {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut sim = Sim::new(prog, cfg, opts_for(seed), trace);
    sim.fallback = Fallback(SmallRng::seed_from_u64(!seed));
    let mut result = Err(format!("livelock: not finished after {MAX_STEPS} steps"));
    for _ in 0..MAX_STEPS {
        let actions = sim.enabled();
        if actions.is_empty() {
            result = sim.finish(prog);
            break;
        }
        let a = match actions[rng.gen_range(0..actions.len())] {
            Action::Switch(..) => {
                let page = rng.gen_range(0..prog.pages);
                let i = rng.gen_range(0..prog.procs.len());
                if rng.gen_ratio(1, 3) && !sim.procs[i].gone {
                    let policies = [Coherence::Invalidate, Coherence::Update, Coherence::Adaptive];
                    Action::Advise(i, page, policies[rng.gen_range(0..3)])
                } else {
                    let to = if rng.gen() { Mode::Update } else { Mode::Invalidate };
                    Action::Switch(page, to)
                }
            }
            a => a,
        };
        if let Err(e) = sim.step(a) {
            result = Err(e);
            break;
        }
    }
    let s = sim.dir.stats();
    let totals = Totals {
        runs: 1,
        replayed_writes: s.replayed_writes,
        updates: s.updates,
        retries: s.retries,
        grants: s.ownership_grants,
        to_update: s.to_update,
        to_invalidate: s.to_invalidate,
        ahead_granted: s.ahead_granted,
        ahead_denied: s.ahead_denied,
        runs_received: sim.procs.iter().map(|p| p.pages.stats().runs_received).sum(),
        owns_kept_in_update: s.owns_kept_in_update,
        forwards: s.forwards,
        forward_aborts: s.forward_aborts,
        flushes: s.flushes,
        backup_invalidations: s.backup_invalidations,
        backups_released: s.backups_released,
        backups_home: s.backups_home,
    };
    Run { result, trace: sim.trace.unwrap_or_default(), totals }
}

/// Runs `SEEDS` seeds of `prog` under every configuration, asserting every outcome is SC;
/// returns the outcomes seen.
fn check(prog: &Program) -> BTreeSet<Outcome> {
    check_configs(prog, CONFIGS).0
}

fn check_configs(prog: &Program, configs: &[Config]) -> (BTreeSet<Outcome>, Vec<Totals>) {
    let sc = sc_outcomes(prog);
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    for &cfg in configs {
        let mut totals = Totals::default();
        for seed in 0..SEEDS {
            let run = simulate(prog, cfg, seed, false);
            totals.add(&run.totals);
            let problem = match run.result {
                Err(e) => e,
                Ok(o) if !sc.contains(&o) => format!("non-SC outcome {o:?}"),
                Ok(o) => {
                    seen.insert(o);
                    continue;
                }
            };
            let trace = simulate(prog, cfg, seed, true).trace;
            let tail = trace[trace.len().saturating_sub(80)..].join("\n  ");
            panic!(
                "{}: config {cfg:?}, seed {seed} ({:?}): {problem}\nSC outcomes: {sc:?}\n\
                 replay: simulate(&prog, CONFIGS[{k}], {seed}, true)\ntrace (last steps):\n  {tail}",
                prog.name,
                opts_for(seed),
                k = CONFIGS.iter().position(|c| c.name == cfg.name).unwrap_or(usize::MAX),
            );
        }
        eprintln!("{} [{}]: {totals:?}", prog.name, cfg.name);
        all.push(totals);
    }
    (seen, all)
}

fn regs_seen(seen: &BTreeSet<Outcome>) -> BTreeSet<Vec<Vec<u64>>> {
    seen.iter().map(|o| o.regs.clone()).collect()
}

const X: Addr = at(0, 0);
const Y: Addr = at(1, 0);
/// Y on the same page as X.
const Y0: Addr = at(0, 1);

fn sb(y: Addr) -> Program {
    Program {
        name: "SB",
        pages: 2,
        procs: vec![vec![St(X, 1), Ld(y, 0)], vec![St(y, 1), Ld(X, 0)]],
    }
}

fn mp(y: Addr) -> Program {
    Program {
        name: "MP",
        pages: 2,
        procs: vec![vec![St(X, 1), St(y, 1)], vec![Ld(y, 0), Ld(X, 1)]],
    }
}

#[test]
fn reference_forbids_the_classic_outcomes() {
    let forbidden = |prog: &Program, regs: Vec<Vec<u64>>| {
        assert!(!regs_seen(&sc_outcomes(prog)).contains(&regs), "{}: {regs:?}", prog.name);
    };
    forbidden(&sb(Y), vec![vec![0], vec![0]]);
    forbidden(&mp(Y), vec![vec![], vec![1, 0]]);
    assert!(regs_seen(&sc_outcomes(&sb(Y))).contains(&vec![vec![1], vec![1]]));
    let two = two_plus_two_w();
    assert!(sc_outcomes(&two).iter().all(|o| !(o.mem[&X] == 1 && o.mem[&Y] == 1)));
}

/// Page `p`, word 0.
const fn pg(p: PageNo) -> Addr {
    at(p, 0)
}

/// Sequential writes (write-ahead), reverse reads (a chain of message passing) and sequential
/// reads (read-ahead) over four pages of a six-page region: runs of requests, grants, denials
/// and replies, with every page rule still checked.
fn runs_program() -> Program {
    Program {
        name: "runs",
        pages: 6,
        procs: vec![
            vec![St(pg(0), 1), St(pg(1), 1), St(pg(2), 1), St(pg(3), 1)],
            vec![Ld(pg(3), 0), Ld(pg(2), 1), Ld(pg(1), 2), Ld(pg(0), 3)],
            vec![Ld(pg(0), 0), Ld(pg(1), 1), Ld(pg(2), 2), Ld(pg(3), 3)],
        ],
    }
}

#[test]
fn runs_of_pages_with_read_ahead_and_write_ahead() {
    let prog = runs_program();
    // Every configuration: update-mode pages and mode switches inside runs included.
    let (seen, totals) = check_configs(&prog, CONFIGS);
    assert!(regs_seen(&seen).len() >= 3, "the schedule should reach several outcomes");
    let inv = totals[0];
    assert!(inv.ahead_granted > 0 && inv.ahead_denied > 0, "write-ahead both granted and denied: {inv:?}");
    assert!(inv.runs_received > 0, "run messages were delivered: {inv:?}");
}

#[test]
fn two_sequential_writers_meet_in_the_middle() {
    // Both write every page, in opposite directions, with an atomic add in the middle: their
    // write-ahead runs collide; every outcome must still be SC.
    let prog = Program {
        name: "two writers",
        pages: 5,
        procs: vec![
            vec![St(pg(0), 1), St(pg(1), 1), Faa(pg(4), 0), St(pg(2), 1), St(pg(3), 1)],
            vec![St(pg(3), 2), St(pg(2), 2), Faa(pg(4), 0), St(pg(1), 2), St(pg(0), 2)],
        ],
    };
    check_configs(&prog, CONFIGS);
}

#[test]
fn store_buffering() {
    let seen = check(&sb(Y));
    assert!(regs_seen(&seen).len() >= 2, "the schedule should reach several outcomes");
}

#[test]
fn store_buffering_same_page() {
    check(&sb(Y0));
}

#[test]
fn message_passing() {
    let seen = check(&mp(Y));
    assert!(regs_seen(&seen).len() >= 2);
}

#[test]
fn message_passing_same_page() {
    check(&mp(Y0));
}

#[test]
fn iriw() {
    check(&Program {
        name: "IRIW",
        pages: 2,
        procs: vec![
            vec![St(X, 1)],
            vec![St(Y, 1)],
            vec![Ld(X, 0), Ld(Y, 1)],
            vec![Ld(Y, 0), Ld(X, 1)],
        ],
    });
}

fn two_plus_two_w() -> Program {
    Program {
        name: "2+2W",
        pages: 2,
        procs: vec![vec![St(X, 1), St(Y, 2)], vec![St(Y, 1), St(X, 2)]],
    }
}

#[test]
fn two_plus_two_writes() {
    check(&two_plus_two_w());
}

#[test]
fn coherence_of_read_read() {
    check(&Program {
        name: "CoRR",
        pages: 1,
        procs: vec![vec![St(X, 1)], vec![Ld(X, 0), Ld(X, 1)]],
    });
}

#[test]
fn load_buffering() {
    check(&Program {
        name: "LB",
        pages: 2,
        procs: vec![vec![Ld(X, 0), St(Y, 1)], vec![Ld(Y, 0), St(X, 1)]],
    });
}

#[test]
fn write_to_read_causality() {
    check(&Program {
        name: "WRC",
        pages: 2,
        procs: vec![vec![St(X, 1)], vec![Ld(X, 0), St(Y, 1)], vec![Ld(Y, 0), Ld(X, 1)]],
    });
}

#[test]
fn three_processes_mixed_pages() {
    let z = at(1, 0);
    check(&Program {
        name: "mixed",
        pages: 2,
        procs: vec![
            vec![St(X, 1), Ld(Y0, 0), St(z, 1)],
            vec![St(Y0, 1), Ld(z, 0), St(X, 2)],
            vec![Ld(X, 0), St(z, 2), Ld(Y0, 1)],
        ],
    });
}

#[test]
fn same_seed_replays_identically() {
    let prog = two_plus_two_w();
    for cfg in [CONFIGS[0], CONFIGS[1], CONFIGS[7], CONFIGS[8]] {
        for seed in [0, 1, 2, 12345] {
            let a = simulate(&prog, cfg, seed, true);
            let b = simulate(&prog, cfg, seed, true);
            assert_eq!(a.result, b.result, "{cfg:?} seed {seed}");
            assert!(!a.trace.is_empty());
            assert_eq!(a.trace, b.trace, "{cfg:?} seed {seed}");
        }
    }
}

/// Three processes each fetch-and-add one word twice (`lock xadd`): the final value is the
/// number of increments and the old values returned are all distinct.
#[test]
fn atomic_counter() {
    let c = at(0, 0);
    let prog = Program { name: "counter", pages: 1, procs: vec![vec![Faa(c, 0), Faa(c, 1)]; 3] };
    let (seen, totals) = check_configs(&prog, CONFIGS);
    for o in &seen {
        assert_eq!(o.mem[&c], 6, "{o:?}");
        let olds: BTreeSet<u64> = o.regs.iter().flatten().copied().collect();
        assert_eq!(olds, (0..6).collect(), "{o:?}");
    }
    // Update mode executes the increments at the coordinator.
    assert!(totals[1].replayed_writes > 0, "{:?}", totals[1]);
}

/// Message passing on one page in update mode, the flag raised by a fetch-and-add: a reader
/// that sees the flag sees the data; plus a second message overwriting the first.
#[test]
fn message_passing_one_page_update_mode() {
    let (data, flag) = (at(0, 0), at(0, 1));
    let prog = Program {
        name: "MP one page, RMW flag",
        pages: 1,
        procs: vec![vec![St(data, 7), Faa(flag, 0)], vec![Ld(flag, 0), Ld(data, 1)]],
    };
    let (seen, totals) = check_configs(&prog, CONFIGS);
    assert!(!regs_seen(&seen).contains(&vec![vec![0], vec![1, 0]]));
    assert!(totals[1].replayed_writes > 0 && totals[1].updates > 0, "{:?}", totals[1]);
    let prog = Program {
        name: "MP one page, two messages",
        pages: 1,
        procs: vec![
            vec![St(data, 1), St(flag, 1), St(data, 2), St(flag, 2)],
            vec![Ld(flag, 0), Ld(data, 1), Ld(flag, 2), Ld(data, 3)],
        ],
    };
    check(&prog);
}

/// The configurations do exercise what they are meant to: replayed writes, updates, retries,
/// and mode switches both ways.
#[test]
fn update_mode_is_exercised() {
    let (_, totals) = check_configs(&sb(Y0), CONFIGS);
    let mut all = Totals::default();
    for t in &totals {
        all.add(t);
    }
    eprintln!("SB same page, all configs: {all:?}");
    assert_eq!(totals[0].replayed_writes, 0);
    assert!(totals[1].replayed_writes > 0 && totals[1].updates > 0, "{:?}", totals[1]);
    assert!(all.retries > 0, "{all:?}");
    assert!(all.to_update > 0 && all.to_invalidate > 0, "{all:?}");
    // Rule 3': ownership requests that met a page in update mode were answered read-only and
    // their stores replayed (the SC and coherence checks above covered those runs).
    assert!(all.owns_kept_in_update > 0, "{all:?}");
}

/// The forward configurations do forward pages, abort forwards (peer failures, sources that
/// wrote back or detached), flush stale pages, keep backups on upgrades, release them and send
/// them home at detaches, and every outcome is still SC.
#[test]
fn direct_forwards_are_exercised() {
    let forwards: Vec<Config> = CONFIGS.iter().copied().filter(|c| c.forwards).collect();
    let mut all = Totals::default();
    for prog in [mp(Y), sb(Y0), two_plus_two_w()] {
        let (_, totals) = check_configs(&prog, &forwards);
        for t in &totals {
            all.add(t);
        }
    }
    eprintln!("forward configs: {all:?}");
    assert!(all.forwards > 0 && all.forward_aborts > 0 && all.flushes > 0, "{all:?}");
    assert!(all.backup_invalidations > 0 && all.backups_released > 0 && all.backups_home > 0, "{all:?}");
}

/// A scripted run: P0 owns X's page and has stored 1; P1 reads X, so the directory sends P0 a
/// Downgrade. P0 is lost before answering (or, in the second run, wrote its page back first):
/// P1's read still completes, with the home copy.
#[test]
fn leave_with_downgrade_pending_completes_with_home_copy() {
    for written_back in [false, true] {
        let prog = Program { name: "leave", pages: 1, procs: vec![vec![St(X, 1)], vec![Ld(X, 0)]] };
        let mut sim = Sim::new(&prog, INVALIDATE, Opts { release: false, detach: false, runs: true }, true);
        let step = |sim: &mut Sim, a: Action| sim.step(a).unwrap();
        step(&mut sim, Action::Exec(0)); // write fault -> Own
        step(&mut sim, Action::Deliver(0)); // Grant
        step(&mut sim, Action::Recv(0)); // install Writable
        step(&mut sim, Action::Exec(0)); // X = 1
        assert_eq!(sim.dir.inspect(0).owner, Some(0));
        if written_back {
            step(&mut sim, Action::Release(0));
            step(&mut sim, Action::Deliver(0)); // Writeback reaches the directory
        }
        step(&mut sim, Action::Exec(1)); // read fault -> Fetch
        step(&mut sim, Action::Deliver(1));
        if written_back {
            assert!(sim.procs[0].from_c.is_empty(), "no owner left to downgrade");
        } else {
            assert_eq!(sim.procs[0].from_c, [ToProcess::Downgrade { page: 0 }]);
            assert!(sim.procs[1].from_c.is_empty(), "Data waits for the DowngradeAck");
            sim.leave(0);
        }
        step(&mut sim, Action::Recv(1)); // Data
        step(&mut sim, Action::Exec(1)); // r0 = X
        let expected = u64::from(written_back);
        assert_eq!(sim.procs[1].regs, [expected], "trace: {:#?}", sim.trace);
        assert!(sim.enabled().is_empty(), "{:?}", sim.enabled());
        let outcome = sim.finish(&prog).unwrap();
        assert_eq!(outcome.mem[&X], expected);
        assert_eq!(sim.dir.inspect(0).readers, [1]);
    }
}

/// A scripted crash with backups (rules E1 and E3): P0 writes X = 1 and forwards the page to
/// P1, which reads 1 and upgrades (P0 keeps its bytes as a backup, nothing goes home), writes
/// X = 2 and is lost before anything of it reached the home. The directory restores P0's
/// backup before the home serves P2: P2 reads 1, the value P1 saw (P1's own write is lost with
/// it, as the crash promise allows), not the home's older 0.
#[test]
fn a_lost_upgrader_is_restored_from_a_backup() {
    let prog = Program { name: "backup-restore", pages: 1, procs: vec![vec![St(X, 1)], vec![Ld(X, 0), St(X, 2)], vec![Ld(X, 0)]] };
    let cfg = with_forwards(config("invalidate + forwards", Coherence::Invalidate, &[], 0));
    let mut sim = Sim::new(&prog, cfg, Opts { release: false, detach: false, runs: false }, true);
    let script = [
        Action::Exec(0), // write fault -> Own
        Action::Deliver(0),
        Action::Recv(0), // Grant
        Action::Exec(0), // X = 1
        Action::Exec(1), // read fault -> Fetch
        Action::Deliver(1), // Forward to P0, ForwardNote to P1
        Action::Recv(0), // P0 sends the page to P1
        Action::Recv(1), // the note
        Action::PeerRecv(0, 1), // installed, Got
        Action::Exec(1), // r0 = 1
        Action::Deliver(1), // Got: readers {0, 1}, home stale
        Action::Exec(1), // write fault on the ReadOnly copy -> Own
        Action::Deliver(1), // InvBackup to P0
        Action::Recv(0), // P0 keeps a backup, BackupAck
        Action::Deliver(0), // Grant to P1, without data
        Action::Recv(1),
        Action::Exec(1), // X = 2
    ];
    for a in script {
        if let Err(e) = sim.step(a) {
            panic!("{a:?}: {e}\ntrace: {:#?}", sim.trace);
        }
    }
    let v = sim.dir.inspect(0);
    assert_eq!((v.owner, v.backups.clone(), v.home.clone()), (Some(1), vec![0], None), "trace: {:#?}", sim.trace);
    assert!(sim.procs[0].pages.has_backup(0));
    sim.leave(1);
    assert_eq!(sim.procs[0].from_c, [ToProcess::RestoreBackup { first: 0, count: 1 }], "trace: {:#?}", sim.trace);
    for a in [Action::Recv(0), Action::Deliver(0), Action::Exec(2), Action::Deliver(2), Action::Recv(2), Action::Exec(2)] {
        if let Err(e) = sim.step(a) {
            panic!("{a:?}: {e}\ntrace: {:#?}", sim.trace);
        }
    }
    assert_eq!(sim.procs[2].regs, [1], "trace: {:#?}", sim.trace);
    assert!(sim.enabled().is_empty(), "{:?}", sim.enabled());
    let outcome = sim.finish(&prog).unwrap();
    assert_eq!(outcome.mem[&X], 1);
    assert_eq!(sim.dir.stats().restores, 1);
    assert!(!sim.procs[0].pages.has_backup(0));
}
