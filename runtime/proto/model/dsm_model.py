#!/usr/bin/env python3
"""
Exhaustive explicit-state model checker for the coordinator-based DSM
coherence protocol (I = invalidate mode, U = update mode), checked for
sequential consistency on litmus tests.

Run:  python3 dsm_model.py --help
      python3 dsm_model.py phase1          # all tests x layouts x modes
      python3 dsm_model.py phase2          # + coordinator mode switches
      python3 dsm_model.py ablations       # rule-removal experiments
      python3 dsm_model.py one RMW --layout sep --modes U --switch \
              --write-in-i accept --trace             # a single run with traces
      python3 dsm_model.py phase2 --ahead both --runs --layouts sep --pad auto
                                           # page runs + read-/write-ahead (Task A)
      python3 dsm_model.py one CoRR --modes U --switch --own-in-u data --trace
                                           # adaptive update mode (Task B), no fix
      python3 dsm_model.py one WRC --forward both --trace
                                           # direct owner->requester forwards (Task C)
      python3 sweeps.py list               # the named Task A / B / C sweeps

Semantics (rules: README.md here and ../DESIGN.md, "Ordering rules that give SC"):
 * one global state = all process states + all channel contents + coordinator
   (C) per-page directory state.  Every transition is ONE atomic action of one
   agent: a process executing its next program step, a process consuming the
   head of its C->P channel, C consuming the head of one P->C channel, C
   serving the head of a page's deferred queue, or (phase 2) C switching a
   page's mode.  Channels are reliable FIFO with unbounded arbitrary delay,
   which is exactly "any enabled head may be consumed next".
 * BFS with memoisation on a canonical (marshal) encoding of the state.
   Parents are recorded so every reported state has a shortest trace.
"""
import sys, time, marshal, argparse, itertools
from array import array
from collections import deque

# --------------------------------------------------------------------------
# litmus tests.  instr: ('R', loc, reg) | ('W', loc, val) | ('A', loc, reg)
# 'A' = atomic fetch-and-add(+1), reg := old value.
# forbidden(r, m): r = dict reg->value, m = dict loc->final value
# --------------------------------------------------------------------------
TESTS = {}
def _T(name, progs, fdesc, forbidden, extra=False):
    TESTS[name] = dict(name=name, progs=progs, fdesc=fdesc,
                       forbidden=forbidden, extra=extra)

_T('SB', [[('W', 'x', 1), ('R', 'y', 'r1')],
          [('W', 'y', 1), ('R', 'x', 'r2')]],
   'r1=0&r2=0', lambda r, m: r['r1'] == 0 and r['r2'] == 0)
_T('MP', [[('W', 'x', 1), ('W', 'y', 1)],
          [('R', 'y', 'r1'), ('R', 'x', 'r2')]],
   'r1=1&r2=0', lambda r, m: r['r1'] == 1 and r['r2'] == 0)
_T('LB', [[('R', 'x', 'r1'), ('W', 'y', 1)],
          [('R', 'y', 'r2'), ('W', 'x', 1)]],
   'r1=1&r2=1', lambda r, m: r['r1'] == 1 and r['r2'] == 1)
_T('IRIW', [[('W', 'x', 1)], [('W', 'y', 1)],
            [('R', 'x', 'r1'), ('R', 'y', 'r2')],
            [('R', 'y', 'r3'), ('R', 'x', 'r4')]],
   'r1=1,r2=0,r3=1,r4=0',
   lambda r, m: (r['r1'], r['r2'], r['r3'], r['r4']) == (1, 0, 1, 0))
_T('WRC', [[('W', 'x', 1)],
           [('R', 'x', 'r1'), ('W', 'y', 1)],
           [('R', 'y', 'r2'), ('R', 'x', 'r3')]],
   'r1=1,r2=1,r3=0', lambda r, m: (r['r1'], r['r2'], r['r3']) == (1, 1, 0))
_T('2+2W', [[('W', 'x', 1), ('W', 'y', 2)],
            [('W', 'y', 1), ('W', 'x', 2)]],
   'final x=1&y=1', lambda r, m: m['x'] == 1 and m['y'] == 1)
_T('CoRR', [[('W', 'x', 1)],
            [('R', 'x', 'r1'), ('R', 'x', 'r2')]],
   'r1=1&r2=0', lambda r, m: r['r1'] == 1 and r['r2'] == 0)
_T('RMW', [[('A', 'x', 'r1')], [('A', 'x', 'r2')]],
   'not(final x=2 & {r1,r2}={0,1})',
   lambda r, m: not (m['x'] == 2 and {r['r1'], r['r2']} == {0, 1}))
# extra tests (beyond the classic shapes): readers hold a cached copy *before* the
# racy accesses, so stale-copy bugs become observable.
_T('SB+pre', [[('R', 'y', 'r0'), ('W', 'x', 1), ('R', 'y', 'r1')],
              [('R', 'x', 'r3'), ('W', 'y', 1), ('R', 'x', 'r2')]],
   'r1=0&r2=0', lambda r, m: r['r1'] == 0 and r['r2'] == 0, extra=True)
_T('MP+pre', [[('W', 'x', 1), ('W', 'y', 1)],
              [('R', 'x', 'r0'), ('R', 'y', 'r1'), ('R', 'x', 'r2')]],
   'r1=1&r2=0', lambda r, m: r['r1'] == 1 and r['r2'] == 0, extra=True)
_T('RMW+W', [[('A', 'x', 'r1')], [('A', 'x', 'r2')], [('W', 'x', 5)]],
   'RMW lost/duplicated', lambda r, m: False, extra=True)
# Task C tests (used by the F-* sweeps only; not in MAIN_TESTS/EXTRA_TESTS): a location
# read through a forward and then written, so the stale-home rules are exercised.
# FW-up: P2's FAA upgrades the RO copy it got by a forward (home stale: Grant without
# data), then P1 re-reads.  FW-inv: P3's FAA is an Own from a non-holder while the home
# is stale (InvData).  Every non-SC (registers, final memory) outcome is reported.
_T('FW-up', [[('W', 'x', 2), ('R', 'x', 'r0')],
             [('R', 'x', 'r1'), ('A', 'x', 'r2')]],
   'non-SC', lambda r, m: False, extra=True)
_T('FW-inv', [[('W', 'x', 2)], [('R', 'x', 'r1')], [('A', 'x', 'r2')]],
   'non-SC (e.g. r1=2,r2=0,x=1: FAA on a stale home)', lambda r, m: False, extra=True)
# Task D test (F-fail-* sweeps only): P1 writes x twice; its second write upgrades the copy
# it shares with P2 after a forward (stale home); a crash of P1 then loses x=1 that P2 read
_T('FD-ww', [[('W', 'x', 1), ('W', 'x', 2)], [('R', 'x', 'r1'), ('R', 'x', 'r2')]],
   'non-SC', lambda r, m: False, extra=True)
# Task E tests (F-backup-* sweeps only): FB-rr: two readers of a forwarded page, then the
# writer upgrades (two backup holders); FB-www: a second upgrade while the first
# generation of backups still exists (P2 re-reads through a forward in between)
_T('FB-rr', [[('W', 'x', 1), ('W', 'x', 2)], [('R', 'x', 'r1')], [('R', 'x', 'r2')]],
   'non-SC', lambda r, m: False, extra=True)
_T('FB-www', [[('W', 'x', 1), ('W', 'x', 2), ('W', 'x', 3)], [('R', 'x', 'r1'), ('R', 'x', 'r2')]],
   'non-SC', lambda r, m: False, extra=True)


def test_locs(test):
    return sorted({ins[1] for p in test['progs'] for ins in p})


def test_regs(test):
    return [ins[2] for p in test['progs'] for ins in p if ins[0] in 'RA']


def sc_outcomes(test):
    """All (regs, final memory) outcomes of all interleavings on one memory."""
    progs = test['progs']
    locs = test_locs(test)
    regs = test_regs(test)
    RI = {r: j for j, r in enumerate(regs)}
    LI = {l: j for j, l in enumerate(locs)}
    out = set()
    seen = set()
    stack = [(tuple(0 for _ in progs), tuple(0 for _ in locs),
              tuple(None for _ in regs))]
    while stack:
        st = stack.pop()
        if st in seen:
            continue
        seen.add(st)
        pcs, mem, rv = st
        done = True
        for i, p in enumerate(progs):
            if pcs[i] >= len(p):
                continue
            done = False
            op, loc, a = p[pcs[i]]
            mem2, rv2 = list(mem), list(rv)
            if op == 'R':
                rv2[RI[a]] = mem[LI[loc]]
            elif op == 'W':
                mem2[LI[loc]] = a
            else:
                rv2[RI[a]] = mem[LI[loc]]
                mem2[LI[loc]] = mem[LI[loc]] + 1
            pcs2 = list(pcs); pcs2[i] += 1
            stack.append((tuple(pcs2), tuple(mem2), tuple(rv2)))
        if done:
            out.add((rv, mem))
    return out


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------
class Cfg:
    def __init__(self, **kw):
        self.layout = 'sep'         # 'sep': one page per location; 'shared'
        self.modes = None           # tuple of initial page modes 'I'/'U'
        self.switch = False         # phase 2: C may switch page modes
        self.switch_budget = None   # None = unbounded (mode bit only)
        self.i2u = 'downgrade'      # I->U: former owner -> RO ('downgrade') or Invalid ('recall')
        self.own_in_u = 'switch'    # Own arriving in U mode: 'switch' (=switch request U->I, then Own) | 'retry' | 'grant'(bug)
        self.write_in_i = 'retry'   # Write/RMW arriving in I mode: 'retry' | 'accept'(bug)
        self.write_busy = 'defer'   # Write/RMW while page busy: 'defer' | 'serve'(literal phase-1 text)
        self.flip = 'after'         # I->U: mode:=U 'after' recall ack | 'before'(bug)
        self.inv_wait = True        # Own waits for InvAcks before Grant
        self.write_block = True     # U-mode writer blocks until WriteAck
        self.atomic_read = True     # Data completes the blocked read atomically
        self.write_needs_ro = True  # U-mode Write/RMW only sent while holding an RO copy
        self.fifo = True            # channels FIFO
        # ---- page runs, read-ahead, write-ahead (Task A; README "Runs and ahead requests")
        self.ahead = 'none'         # ahead requests a process may send: 'none'|'read'|'write'|'both'
                                    # | 'own' (unconditional Own-ahead) | 'all' (read, write, own)
        self.ahead_budget = 1       # ahead page-requests each process may send in a whole run
        self.ahead_total = None     # None | cap on ahead page-requests of all processes together
        self.ahead_procs = None     # None (all) | process indices (0-based) that may send ahead
        self.ahead_done = False     # may a process that finished its program still send ahead?
        self.runs = False           # one atomic step's messages to one destination = one run
        self.pad = False            # add an untouched page 'pad' (for one-location tests)
        self.cown_ok = 'strict'     # conditional Own granted iff free ('strict') | 'nosharers'(bug: ignores
                                    # readers) | 'noowner'(bug: ignores the owner) | variants that drop
                                    # one test: 'ignorebusy' (busy/queue), 'anymode' (mode I)
        # ---- adaptive update mode (Task B): own_in_u='data'
        self.forced = ()            # process indices (0-based) whose stores cannot be replayed
        self.escalate = 'none'      # own_in_u='data': next Own is forced after 'none'|'retry'(Retry(I))|'owndata'
        self.count_attempts = False # track requests sent per instruction (bounded re-execution)
        # ---- direct owner->requester transfers (Task C; README "Task C: direct forwards")
        self.forward = 'none'       # 'none' | 'fetch' (FwdShare) | 'own' (FwdGive) | 'both'
        self.fwd_holder = 'any'     # stale-home holder C picks: 'any' (branch over every sharer) | 'min'
        self.fwd_mutant = 'none'    # checker self-tests: 'early' | 'keepw' | 'stalehome'
        self.fwd_mix = False        # C may choose, per transaction, to forward or to go through
                                    # home as today (branch); a stale home is always forwarded
        self.fwd_note = True        # the fix: C also sends FwdNote(p) to the requester on C->R,
                                    # and the requester applies forwarded data for p only after
                                    # that note (False = the rule as first proposed: not SC)
        # ---- Task D: forwards with failures, the session-25 rules (dsm_faults.py; README
        # "Task D: forward failures").  fwd_d=True selects dsm_faults.ModelD.
        self.fwd_d = False
        self.fwd_stale_own = 'flush'  # Own from a non-holder on a stale page: 'flush' (D8: Downgrade
                                    # to one reader, then the ordinary Own) | 'invdata' (Task C, C6)
        self.fwd_upgrade = 'nodata' # Own from a reader of a stale page: 'nodata' (D8 as written) |
                                    # 'flush' (flush from another reader first, if there is one)
        self.fwd_wb = 0             # releases (Writeback of one page, P6) allowed in a run, any process
        self.fwd_detach = 0         # clean detaches (a finished process writes back and leaves)
        self.fwd_peerfail = 0       # peer sends that fail (P5: ForwardReturn; or 'ambiguous': delivered
                                    # and ForwardReturn) in a run
        self.fwd_crash = ()         # processes (0-based) that may crash; at most one crash per run
        self.fwd_abort_mark = 'note'  # P3/P4 aborted mark: 'note' (a new ForwardNote for the request
                                    # clears it) | 'sticky' (kept until the Fetch is answered) |
                                    # 'none' (the fix: no mark; Pages for the pending request are
                                    # kept until a note, the latest replaces older ones; Data drops them)
        self.fwd_flush_lost = 'reflush'  # flush target lost while the page is still stale:
                                    # 'reflush' (Downgrade the next reader) | 'home' (use the home)
        self.fwd_d3 = 'asis'        # D3 as written: only a Writeback C keeps (owner, reader of a stale
                                    # page) aborts | 'always': any Writeback from the source aborts
        self.fwd_late_return = 'accept'  # D4b "elsewhere": a ForwardReturn from a reader of a stale
                                    # page refreshes the home ('accept', as written) | 'ignore' (fix)
        self.fwd_return_id = False  # fix: ForwardReturn names its forward (to, req); D4b only for it
        self.fwd_dmut = 'none'      # Task D mutants: acceptaborted | nohandshake | noskip |
                                    # detachdrop | flushdrop
        # ---- Task E: backup copies (fwd_upgrade='backup'; README "Task E: backup copies")
        self.fwd_backup_again = 'flush'  # upgrade of a stale page while an older backup
                                    # generation exists: 'flush' (today's rule) | 'roll'
                                    # (a new generation of backups replaces the old one)
        self.fwd_bkmut = 'none'     # Task E mutants: earlyrelease | norestore | nowait |
                                    # bkdetachdrop | restoreany
        self.max_states = 30_000_000
        for k, v in kw.items():
            if not hasattr(self, k):
                raise KeyError(k)
            setattr(self, k, v)

    def diff(self):
        d = Cfg()
        return {k: v for k, v in self.__dict__.items()
                if k not in ('modes', 'layout', 'max_states') and getattr(d, k) != v}

    def use_aux(self):
        return (self.ahead != 'none' or self.own_in_u == 'data'
                or self.count_attempts or self.escalate != 'none')


class ProtoErr(Exception):
    pass


def bits(mask):
    i = 0
    while mask:
        if mask & 1:
            yield i
        mask >>= 1
        i += 1


# --------------------------------------------------------------------------
# state: (procs, c2p, p2c, pages, regs, sbudget, aux)
#   procs[i] = (pc, blk, copies);  blk in None,'F','O','Wr','Rmw'
#   copies[p] = (cs, bytes|None, belief)  cs in 'N'(Invalid),'R','W'
#   c2p[i], p2c[i] = tuples of messages (FIFO, head = index 0)
#   pages[p] = (mode, owner(-1), sharers bitmask, home bytes, busy, queue, home_valid)
#   busy = None | (kind 'F'|'O'|'S', requester, awaited bitmask, old owner)
#          forwards (Task C): kind 'FF' (FwdShare: requester, 1<<requester, holder),
#          'FO' (FwdGive: requester, 1<<requester, old owner), 'SF' (switch I->U
#          waiting for the FlushAck of a holder: -1, 1<<holder, holder)
#   home_valid: always True unless forward != 'none'.  False: the home bytes are
#          stale.  It matters only while the page has no owner: then the sharer set is
#          non-empty and every sharer holds the current data.  With an owner the home is
#          irrelevant (an upgrade or a FwdGive leaves the flag False; the next
#          RecallAck/DowngradeAck sets it)
#   sbudget = None | per-page switch budget
#   aux = None | per process (ahead budget left, pend per page 0|'F'|'O',
#                             esc (next Own forced) 0|1, attempts for this instruction)
#   A channel element is a message or ('Run', (msg, msg, ...)): a page run, sent
#   by one atomic step and consumed by one atomic step.
#   peer = None (forward == 'none') | (chans, notes): chans = tuple of N*N FIFO channels,
#   chans[i*N+j] = P_i -> P_j (the diagonal stays empty); notes[i] = bitmask of pages whose
#   FwdNote P_i has consumed and whose forwarded data it has not yet consumed
#   state = (procs, c2p, p2c, pages, regs, sbudget, aux, peer)
# --------------------------------------------------------------------------
ATT_CAP = 9     # attempts counter saturates here


class Mut:
    __slots__ = ('procs', 'c2p', 'p2c', 'pages', 'regs', 'sb', 'aux', 'out', 'pp', 'nt',
                 'vec', 'picks')

    def __init__(self, s, vec=()):
        self.procs = list(s[0]); self.c2p = list(s[1]); self.p2c = list(s[2])
        self.pages = list(s[3]); self.regs = list(s[4])
        self.sb = s[5]
        self.aux = None if s[6] is None else list(s[6])
        if s[7] is None:
            self.pp = self.nt = None
        else:
            self.pp = list(s[7][0]); self.nt = list(s[7][1])
        self.out = []          # messages sent in this step: (to_c?, dest, msg);
                               # to_c None = peer channel number dest
        self.vec = vec         # choices of this successor (see pick)
        self.picks = []

    def pick(self, opts):
        """a nondeterministic choice inside one step (Task C: which holder C
        uses); successors() enumerates every choice vector"""
        j = len(self.picks)
        c = self.vec[j] if j < len(self.vec) else 0
        self.picks.append((c, len(opts)))
        return opts[c]

    def flush(self, runs):
        """Append this step's messages to the channels, in send order.  With runs,
        all messages of the step to one destination form one run element."""
        if not runs:
            for toc, d, msg in self.out:
                if toc:
                    self.p2c[d] = self.p2c[d] + (msg,)
                elif toc is None:
                    self.pp[d] = self.pp[d] + (msg,)
                else:
                    self.c2p[d] = self.c2p[d] + (msg,)
            return
        groups = {}
        for toc, d, msg in self.out:
            groups.setdefault((toc, d), []).append(msg)
        for (toc, d), msgs in groups.items():
            el = msgs[0] if len(msgs) == 1 else ('Run', tuple(msgs))
            if toc:
                self.p2c[d] = self.p2c[d] + (el,)
            elif toc is None:
                self.pp[d] = self.pp[d] + (el,)
            else:
                self.c2p[d] = self.c2p[d] + (el,)

    def setaux(self, i, **kw):
        b, pend, esc, att = self.aux[i]
        if 'budget' in kw: b = kw['budget']
        if 'esc' in kw: esc = kw['esc']
        if 'att' in kw: att = kw['att']
        if 'pend' in kw:
            p, v = kw['pend']
            pend = pend[:p] + (v,) + pend[p + 1:]
        self.aux[i] = (b, pend, esc, att)

    def pg(self, p):
        x = self.pages[p]
        if type(x) is tuple:
            x = list(x); self.pages[p] = x
        return x

    def freeze(self):
        return (tuple(self.procs), tuple(self.c2p), tuple(self.p2c),
                tuple(tuple(x) for x in self.pages), tuple(self.regs), self.sb,
                None if self.aux is None else tuple(self.aux),
                None if self.pp is None else (tuple(self.pp), tuple(self.nt)))


def fmt_bytes(b, pg):
    return '[' + ','.join(f'{l}={v}' for l, v in zip(pg, b)) + ']'


class Model:
    def __init__(self, test, cfg):
        self.test = test
        self.cfg = cfg
        self.progs = [tuple(p) for p in test['progs']]
        self.N = len(self.progs)
        self.locs = test_locs(test)
        if cfg.layout == 'shared':
            self.pages = [tuple(self.locs)]
        else:
            self.pages = [(l,) for l in self.locs]
        if cfg.pad:
            self.pages.append(('pad',))     # a page no program touches
        self.NP = len(self.pages)
        self.PAGE, self.IDX = {}, {}
        for pi, pg in enumerate(self.pages):
            for k, l in enumerate(pg):
                self.PAGE[l] = pi; self.IDX[l] = k
        self.pn = ['p' + ''.join(pg) for pg in self.pages]
        self.reglist = test_regs(test)
        self.REG = {r: j for j, r in enumerate(self.reglist)}
        assert cfg.modes is not None and len(cfg.modes) == self.NP
        self.aux = cfg.use_aux()
        self.AK = {'none': (), 'read': ('F',), 'write': ('O',), 'both': ('F', 'O'),
                   'own': ('X',), 'all': ('F', 'O', 'X')}[cfg.ahead]
        self.forced = frozenset(cfg.forced)
        self.elig_cs = 'NR' if 'X' in self.AK else 'N'
        self.ahead_total = cfg.ahead_total
        self.ab0 = tuple(cfg.ahead_budget if self.AK and (cfg.ahead_procs is None
                                                         or i in cfg.ahead_procs) else 0
                         for i in range(self.N))
        self._ahead_cache = {}
        self.fwd_fetch = cfg.forward in ('fetch', 'both')
        self.fwd_own = cfg.forward in ('own', 'both')
        self.fwd = cfg.forward != 'none'
        self.mut = cfg.fwd_mutant
        assert cfg.forward in ('none', 'fetch', 'own', 'both'), cfg.forward
        assert cfg.fwd_mutant in ('none', 'early', 'keepw', 'stalehome'), cfg.fwd_mutant
        assert cfg.fwd_holder in ('any', 'min'), cfg.fwd_holder

    # ---------------------------------------------------------------- init
    def initial(self):
        procs = tuple((0, None, tuple(('N', None, self.cfg.modes[p])
                                      for p in range(self.NP)))
                      for _ in range(self.N))
        e = tuple(() for _ in range(self.N))
        pages = tuple((self.cfg.modes[p], -1, 0, (0,) * len(self.pages[p]),
                       None, (), True) for p in range(self.NP))
        regs = tuple(None for _ in self.reglist)
        sb = self.cfg.switch_budget
        sbt = None if sb is None else tuple(sb for _ in range(self.NP))
        aux = None
        if self.aux:
            aux = tuple((self.ab0[i], (0,) * self.NP, 0, 0) for i in range(self.N))
        pp = ((tuple(() for _ in range(self.N * self.N)), (0,) * self.N)
              if self.fwd else None)
        return (procs, e, e, pages, regs, sbt, aux, pp)

    # ------------------------------------------------------- helpers
    def msgstr(self, m):
        k = m[0]
        if k == 'Run':
            return 'Run[' + ', '.join(self.msgstr(x) for x in m[1]) + ']'
        p = m[1]; pn = self.pn[p]
        if k == 'Own' and len(m) > 2:
            return f'Own!({pn})'
        if k == 'Grant' and m[2] is None:
            return f'Grant({pn},no data: upgrade of the RO copy,mode={m[3]})'
        if k in ('Data', 'Grant', 'OwnData', 'FwdData'):
            return f'{k}({pn},{fmt_bytes(m[2], self.pages[p])},mode={m[3]})'
        if k == 'FwdGrant':
            return f'FwdGrant({pn},{fmt_bytes(m[2], self.pages[p])})'
        if k == 'FwdShare':
            return f'FwdShare({pn},to=P{m[2]+1},mode={m[3]})'
        if k == 'FwdGive':
            return f'FwdGive({pn},to=P{m[2]+1})'
        if k == 'FwdNote':
            return f'FwdNote({pn},from=P{m[2]+1})'
        if k in ('DowngradeAck', 'RecallAck', 'InvDataAck', 'FlushAck'):
            return f'{k}({pn},{fmt_bytes(m[2], self.pages[p])})'
        if k in ('Write', 'Update'):
            return f'{k}({pn},{self.pages[p][m[2]]}={m[3]})'
        if k == 'RMW':
            return f'RMW({pn},{self.pages[p][m[2]]}+=1)'
        if k == 'RMWAck':
            return f'RMWAck({pn},old={m[2]})'
        if k == 'Retry':
            return f'Retry({pn},mode={m[2]})'
        return f'{k}({pn})'

    @staticmethod
    def setcopy(m, i, p, c, pc=None, blk=0):
        opc, oblk, copies = m.procs[i]
        copies = copies[:p] + (c,) + copies[p + 1:]
        m.procs[i] = (opc if pc is None else pc, oblk if blk == 0 else blk, copies)

    def to_c(self, m, i, msg):
        m.out.append((True, i, msg))

    def to_p(self, m, i, msg, stale_ok=False):
        if (self.fwd and msg[0] in ('Data', 'Grant', 'OwnData') and msg[2] is not None
                and not m.pg(msg[1])[6] and not stale_ok):
            raise ProtoErr(f'C: {self.msgstr(msg)} to P{i+1} sends the STALE home of '
                           f'{self.pn[msg[1]]}')
        m.out.append((False, i, msg))

    def to_peer(self, m, i, j, msg):
        m.out.append((None, i * self.N + j, msg))

    # ------------------------------------------------------- process step
    def fault(self, m, i, msg, piggy):
        """send the request of a faulting instruction (+ ahead pages riding in the
        same run); counts an attempt"""
        self.to_c(m, i, msg)
        if self.cfg.count_attempts:
            a = m.aux[i]
            if a[3] < ATT_CAP:
                m.setaux(i, att=a[3] + 1)
        if piggy:
            return ' + ' + self.send_ahead(m, i, piggy)
        return ''

    def t_exec(self, m, i, piggy=()):
        pc, blk, copies = m.procs[i]
        ins = self.progs[i][pc]
        op, loc = ins[0], ins[1]
        p, k = self.PAGE[loc], self.IDX[loc]
        cs, by, bel = copies[p]
        P, pn = f'P{i+1}', self.pn[p]
        if op == 'R':
            if cs != 'N':
                if piggy:
                    return None
                m.regs[self.REG[ins[2]]] = by[k]
                m.procs[i] = (pc + 1, None, copies)
                return f'{P}: {ins[2]}={loc} -> {by[k]} (local {cs} copy)'
            x = self.fault(m, i, ('Fetch', p), piggy)
            m.procs[i] = (pc, 'F', copies)
            return f'{P}: read {loc}: {pn} Invalid -> send Fetch({pn}){x}'
        what = f'{loc}={ins[2]}' if op == 'W' else f'FAA({loc}) into {ins[2]}'
        forced = i in self.forced
        if bel == 'I' or (forced and cs != 'W'):
            if cs == 'W':
                if piggy:
                    return None
                nb = list(by)
                if op == 'W':
                    nb[k] = ins[2]
                    d = ''
                else:
                    m.regs[self.REG[ins[2]]] = by[k]; nb[k] = by[k] + 1
                    d = f' (old={by[k]})'
                m.procs[i] = (pc + 1, None, copies[:p] + (('W', tuple(nb), bel),) + copies[p + 1:])
                return f'{P}: {what} locally in W copy{d}'
            if self.cfg.own_in_u == 'data' and (forced or m.aux[i][2]):
                msg = ('Own', p, 'f')       # forced Own: C switches U->I if needed
                why = 'store cannot be replayed' if forced else 'escalated after a bounce'
            else:
                msg = ('Own', p); why = None
            x = self.fault(m, i, msg, piggy)
            m.procs[i] = (pc, 'O', copies)
            if why:
                return f'{P}: {what}: {pn} {cs}, believes {bel} -> send Own!({pn}) ({why}){x}'
            return f'{P}: {what}: {pn} {cs}, believes {bel} -> send Own({pn}){x}'
        # believes U
        if cs == 'N' and self.cfg.write_needs_ro:
            x = self.fault(m, i, ('Fetch', p), piggy)
            m.procs[i] = (pc, 'F', copies)
            return f'{P}: {what}: believes U, {pn} Invalid -> send Fetch({pn}){x}'
        if cs in 'RN':
            if op == 'W':
                x = self.fault(m, i, ('Write', p, k, ins[2]), piggy)
                if self.cfg.write_block:
                    m.procs[i] = (pc, 'Wr', copies)
                    return f'{P}: {what}: believes U -> send Write({pn},{what}){x}'
                nb = list(by); nb[k] = ins[2]
                m.procs[i] = (pc + 1, None, copies[:p] + (('R', tuple(nb), bel),) + copies[p + 1:])
                return f'{P}: {what}: believes U -> send Write, apply locally, continue (no wait){x}'
            x = self.fault(m, i, ('RMW', p, k), piggy)
            m.procs[i] = (pc, 'Rmw', copies)
            return f'{P}: {what}: believes U -> send RMW({pn},{loc}+=1){x}'
        raise ProtoErr(f'{P} holds a W copy of {pn} but believes mode U')

    # ------------------------------------------------------- ahead requests
    def send_ahead(self, m, i, reqs):
        """reqs = ((page, 'F'|'O'), ...): read-ahead Fetch / write-ahead conditional Own"""
        b = m.aux[i][0]
        parts = []
        for p, kd in reqs:
            if kd == 'F':
                self.to_c(m, i, ('Fetch', p)); parts.append(f'read-ahead Fetch({self.pn[p]})')
            elif kd == 'X':
                self.to_c(m, i, ('Own', p)); parts.append(f'own-ahead Own({self.pn[p]})')
            else:
                self.to_c(m, i, ('COwn', p)); parts.append(f'write-ahead COwn({self.pn[p]})')
            m.setaux(i, pend=(p, kd))
            b -= 1
        m.setaux(i, budget=b)
        return ', '.join(parts)

    def t_ahead(self, m, i, reqs):
        return f'P{i+1}: ' + self.send_ahead(m, i, reqs)

    def ahead_choices(self, elig, budget):
        """all ahead requests one step may send: one page each without runs;
        with runs any non-empty set of eligible pages (at most budget).
        elig = ((page, copy state), ...); read-/write-ahead need an Invalid page,
        own-ahead an Invalid or RO page"""
        key = (elig, budget)
        r = self._ahead_cache.get(key)
        if r is None:
            r = []
            sizes = range(1, min(budget, len(elig)) + 1) if self.cfg.runs else (1,)
            for n in sizes:
                for pages in itertools.combinations(elig, n):
                    for kinds in itertools.product(self.AK, repeat=n):
                        if all(k == 'X' or cs == 'N' for (_, cs), k in zip(pages, kinds)):
                            r.append(tuple((p, k) for (p, _), k in zip(pages, kinds)))
            self._ahead_cache[key] = r
        return r

    # ------------------------------------------------------- process receive
    def t_precv(self, m, i, j):
        ch = m.c2p[i]
        msg = ch[j]
        m.c2p[i] = ch[:j] + ch[j + 1:]
        if msg[0] == 'Run':       # a run: its messages in order, in this one step
            return f'P{i+1}: run of {len(msg[1])}: ' + '; '.join(
                self.p_handle(m, i, x)[len(f'P{i+1}: '):] for x in msg[1])
        return self.p_handle(m, i, msg)

    def p_handle(self, m, i, msg):
        pc, blk, copies = m.procs[i]
        kind, p = msg[0], msg[1]
        cs, by, bel = copies[p]
        P, pn = f'P{i+1}', self.pn[p]
        lab = f'{P}: recv {self.msgstr(msg)}'
        ins = self.progs[i][pc] if pc < len(self.progs[i]) else None
        pend = m.aux[i][1][p] if m.aux is not None else 0
        if pend:
            if kind in ('Data', 'FwdData') and pend == 'F':
                if cs != 'N':
                    raise ProtoErr(lab + f' (read-ahead reply) while copy is {cs}')
                m.procs[i] = (pc, blk, copies[:p] + (('R', msg[2], msg[3]),) + copies[p + 1:])
                m.setaux(i, pend=(p, 0))
                return lab + ' -> read-ahead reply: install RO' + self.got(m, i, msg)
            if kind == 'Grant' and pend == 'O':
                if cs != 'N':
                    raise ProtoErr(lab + f' (write-ahead grant) while copy is {cs}')
                m.procs[i] = (pc, blk, copies[:p] + (('W', msg[2], msg[3]),) + copies[p + 1:])
                m.setaux(i, pend=(p, 0))
                return lab + ' -> write-ahead granted: install W'
            if kind == 'Denied' and pend == 'O':
                m.setaux(i, pend=(p, 0))
                return lab + ' -> write-ahead denied: nothing pending'
            if pend == 'X' and kind in ('Grant', 'FwdGrant'):
                if cs == 'W':
                    raise ProtoErr(lab + ' (own-ahead grant) while copy is W')
                data = self.grant_bytes(lab, msg, cs, by)
                m.procs[i] = (pc, blk, copies[:p] + (('W', data, 'I'),) + copies[p + 1:])
                m.setaux(i, pend=(p, 0))
                return lab + ' -> own-ahead granted: install W' + self.got(m, i, msg)
            if pend == 'X' and kind == 'OwnData':
                if cs == 'W' or (cs == 'R' and by != msg[2]):
                    raise ProtoErr(lab + f' (own-ahead) while copy is {cs} {by}')
                m.procs[i] = (pc, blk, copies[:p] + (('R', msg[2], 'U'),) + copies[p + 1:])
                m.setaux(i, pend=(p, 0))
                return lab + ' -> own-ahead answered in mode U: install RO, believe U'
            if pend == 'X' and kind == 'Retry':
                m.procs[i] = (pc, blk, copies[:p] + ((cs, by, msg[2]),) + copies[p + 1:])
                m.setaux(i, pend=(p, 0))
                return lab + f' -> own-ahead bounced: believe mode {msg[2]}'
            if kind in ('Data', 'Grant', 'Denied', 'OwnData', 'Retry', 'WriteAck', 'RMWAck',
                        'FwdData', 'FwdGrant'):
                raise ProtoErr(lab + f' while an ahead request ({pend}) is pending')
        if kind == 'Denied':
            raise ProtoErr(lab + ' without a write-ahead pending')
        if kind == 'OwnData':
            if blk != 'O' or self.PAGE[ins[1]] != p:
                raise ProtoErr(lab + ' while not waiting for ownership')
            if cs == 'W':
                raise ProtoErr(lab + ' while copy is W')
            if cs == 'R' and by != msg[2]:
                raise ProtoErr(lab + f' but RO copy {fmt_bytes(by, self.pages[p])} differs')
            m.procs[i] = (pc, None, copies[:p] + (('R', msg[2], 'U'),) + copies[p + 1:])
            if self.cfg.escalate == 'owndata':
                m.setaux(i, esc=1)
            return lab + ' -> install RO, believe mode U, redo the store (as a replayed write)'
        if kind in ('Data', 'FwdData'):
            if blk != 'F' or self.PAGE[ins[1]] != p:
                raise ProtoErr(lab + ' while not fetching that page')
            if cs != 'N':
                raise ProtoErr(lab + f' while copy is {cs}')
            data, mode = msg[2], msg[3]
            if ins[0] == 'R' and self.cfg.atomic_read:
                v = data[self.IDX[ins[1]]]
                m.regs[self.REG[ins[2]]] = v
                m.procs[i] = (pc + 1, None, copies[:p] + (('R', data, mode),) + copies[p + 1:])
                return lab + f' -> install RO, {ins[2]}={ins[1]} -> {v}' + self.got(m, i, msg)
            m.procs[i] = (pc, None, copies[:p] + (('R', data, mode),) + copies[p + 1:])
            return lab + ' -> install RO, unblock (step re-executes)' + self.got(m, i, msg)
        if kind in ('Grant', 'FwdGrant'):
            if blk != 'O' or self.PAGE[ins[1]] != p:
                raise ProtoErr(lab + ' while not waiting for ownership')
            k = self.IDX[ins[1]]
            nb = list(self.grant_bytes(lab, msg, cs, by))
            if ins[0] == 'W':
                nb[k] = ins[2]; d = f'write {ins[1]}={ins[2]}'
            else:
                m.regs[self.REG[ins[2]]] = nb[k]; d = f'FAA {ins[1]}: old={nb[k]}'
                nb[k] += 1
            m.procs[i] = (pc + 1, None, copies[:p] + (('W', tuple(nb), 'I'),) + copies[p + 1:])
            return lab + f' -> install W, {d}' + self.got(m, i, msg)
        if kind == 'WriteAck':
            if blk != 'Wr':
                if not self.cfg.write_block:
                    return lab + ' (ignored: writer did not wait)'
                raise ProtoErr(lab + ' while not waiting for it')
            k = self.IDX[ins[1]]
            if cs != 'N':
                nb = list(by); nb[k] = ins[2]
                nc = (cs, tuple(nb), bel); d = f' -> apply {ins[1]}={ins[2]} locally'
            else:
                nc = (cs, by, bel); d = ' -> (copy invalid, nothing to apply)'
            m.procs[i] = (pc + 1, None, copies[:p] + (nc,) + copies[p + 1:])
            return lab + d + ', continue'
        if kind == 'RMWAck':
            if blk != 'Rmw':
                raise ProtoErr(lab + ' while not waiting for it')
            k = self.IDX[ins[1]]; old = msg[2]
            m.regs[self.REG[ins[2]]] = old
            if cs != 'N':
                nb = list(by); nb[k] = old + 1; nc = (cs, tuple(nb), bel)
            else:
                nc = (cs, by, bel)
            m.procs[i] = (pc + 1, None, copies[:p] + (nc,) + copies[p + 1:])
            return lab + f' -> {ins[2]}={old}, continue'
        if kind == 'Retry':
            if blk not in ('O', 'Wr', 'Rmw'):
                raise ProtoErr(lab + ' while not waiting for a write')
            m.procs[i] = (pc, None, copies[:p] + ((cs, by, msg[2]),) + copies[p + 1:])
            if self.cfg.escalate == 'retry':
                m.setaux(i, esc=1)
            return lab + f' -> believe mode {msg[2]}, redo the write'
        if kind == 'Inv':
            if cs == 'W':
                raise ProtoErr(lab + ' but copy is W (dirty data would be lost)')
            m.procs[i] = (pc, blk, copies[:p] + (('N', None, bel),) + copies[p + 1:])
            self.to_c(m, i, ('InvAck', p))
            return lab + f' -> Invalid, send InvAck({pn})'
        if kind == 'Downgrade':
            if cs != 'W':
                raise ProtoErr(lab + f' but copy is {cs}')
            m.procs[i] = (pc, blk, copies[:p] + (('R', by, bel),) + copies[p + 1:])
            self.to_c(m, i, ('DowngradeAck', p, by))
            return lab + f' -> RO, send DowngradeAck({pn},{fmt_bytes(by, self.pages[p])})'
        if kind == 'Recall':
            if cs != 'W':
                raise ProtoErr(lab + f' but copy is {cs}')
            m.procs[i] = (pc, blk, copies[:p] + (('N', None, bel),) + copies[p + 1:])
            self.to_c(m, i, ('RecallAck', p, by))
            return lab + f' -> Invalid, send RecallAck({pn},{fmt_bytes(by, self.pages[p])})'
        if kind == 'FwdNote':       # Task C fix: forwarded data for p may now be applied
            if (m.nt[i] >> p) & 1:
                raise ProtoErr(lab + ' while a note for the page is already held')
            m.nt[i] |= 1 << p
            return lab + f' -> expect the forwarded data of {pn} from P{msg[2]+1}'
        if kind == 'FwdShare':      # Task C: C asks this holder to send the data to R
            to, mode, exp = msg[2], msg[3], msg[4]
            if cs != exp:
                raise ProtoErr(lab + f' but copy is {cs} (expected {exp})')
            if to == i:
                raise ProtoErr(lab + ' forwarding to itself')
            if exp == 'W' and self.mut != 'keepw':
                m.procs[i] = (pc, blk, copies[:p] + (('R', by, bel),) + copies[p + 1:])
                d = 'RO'
            else:
                d = 'keeps W (mutant keepw)' if exp == 'W' else 'keeps RO'
            self.to_peer(m, i, to, ('FwdData', p, by, mode))
            return lab + f' -> {d}, send FwdData({pn},{fmt_bytes(by, self.pages[p])},mode={mode}) to P{to+1}'
        if kind == 'FwdGive':       # Task C: C asks the owner to hand W straight to R
            to = msg[2]
            if cs != 'W':
                raise ProtoErr(lab + f' but copy is {cs} (expected W)')
            m.procs[i] = (pc, blk, copies[:p] + (('N', None, bel),) + copies[p + 1:])
            self.to_peer(m, i, to, ('FwdGrant', p, by))
            return lab + f' -> Invalid, send FwdGrant({pn},{fmt_bytes(by, self.pages[p])}) to P{to+1}'
        if kind == 'InvData':       # Task C: stale home; the last holder returns the data
            if cs != 'R':
                raise ProtoErr(lab + f' but copy is {cs} (expected RO)')
            m.procs[i] = (pc, blk, copies[:p] + (('N', None, bel),) + copies[p + 1:])
            self.to_c(m, i, ('InvDataAck', p, by))
            return lab + f' -> Invalid, send InvDataAck({pn},{fmt_bytes(by, self.pages[p])})'
        if kind == 'Flush':         # Task C: stale home before a switch I->U
            if cs != 'R':
                raise ProtoErr(lab + f' but copy is {cs} (expected RO)')
            self.to_c(m, i, ('FlushAck', p, by))
            return lab + f' -> keep RO, send FlushAck({pn},{fmt_bytes(by, self.pages[p])})'
        if kind == 'Update':
            if cs == 'R':
                nb = list(by); nb[msg[2]] = msg[3]
                m.procs[i] = (pc, blk, copies[:p] + (('R', tuple(nb), bel),) + copies[p + 1:])
                return lab + ' -> applied to RO copy'
            if cs == 'W':
                raise ProtoErr(lab + ' arrives at a W copy')
            return lab + ' -> copy Invalid, ignored'
        raise ProtoErr('unknown message ' + repr(msg))

    def got(self, m, i, msg):
        """after a forwarded reply: tell C the transaction is complete"""
        if msg[0] not in ('FwdData', 'FwdGrant'):
            return ''
        if self.cfg.fwd_note:
            if not (m.nt[i] >> msg[1]) & 1:
                raise ProtoErr(f'P{i+1}: {self.msgstr(msg)} applied before its FwdNote')
            m.nt[i] &= ~(1 << msg[1])
        self.to_c(m, i, ('Got', msg[1]))
        return f', send Got({self.pn[msg[1]]})'

    def grant_bytes(self, lab, msg, cs, by):
        """the bytes a Grant/FwdGrant installs; a Grant without data (upgrade while
        the home is stale) keeps the requester's RO copy"""
        if msg[0] == 'FwdGrant':
            if cs != 'N':
                raise ProtoErr(lab + f' while copy is {cs}')
            return msg[2]
        if msg[2] is None:
            if cs != 'R':
                raise ProtoErr(lab + f' (no data) but copy is {cs}')
            return by
        return msg[2]

    @staticmethod
    def noted(el, note):
        """may this peer-channel element be consumed (its notes are all in)?"""
        msgs = el[1] if el[0] == 'Run' else (el,)
        return all((note >> x[1]) & 1 for x in msgs)

    def t_peer(self, m, c, j):
        """P_dst consumes element j (the head) of peer channel c = src*N + dst"""
        src, dst = divmod(c, self.N)
        ch = m.pp[c]
        msg = ch[j]
        m.pp[c] = ch[:j] + ch[j + 1:]
        P = f'P{dst+1}: '
        pre = f'P{dst+1}: [peer P{src+1}->P{dst+1}] '
        if msg[0] == 'Run':
            return pre + f'run of {len(msg[1])}: ' + '; '.join(
                self.p_handle(m, dst, x)[len(P):] for x in msg[1])
        return pre + self.p_handle(m, dst, msg)[len(P):]

    # ------------------------------------------------------- coordinator
    def serve(self, m, p, kind, A, args):
        """Serve a request at C (page p not busy). Returns description."""
        cfg = self.cfg
        g = m.pg(p)
        mode, owner, sh, home = g[0], g[1], g[2], g[3]
        pn = self.pn[p]; PA = f'P{A+1}'
        if kind == 'Fetch':
            if owner == A:
                raise ProtoErr(f'C: Fetch({pn}) from its owner {PA}')
            if owner >= 0 and self.fwd_fetch and self.fwd_now(m):    # Task C rule 1
                return self.fwd_share(m, p, A, owner, 'W')
            if owner < 0 and not g[6]:                 # Task C rule 3: stale home
                if (sh >> A) & 1:
                    raise ProtoErr(f'C: Fetch({pn}) from {PA}, already a sharer')
                if self.mut == 'stalehome':            # mutant: serve the stale home
                    self.to_p(m, A, ('Data', p, home, mode), stale_ok=True)
                    g[2] = sh | (1 << A)
                    return (f'Data({pn},{fmt_bytes(home, self.pages[p])},mode={mode}) from the '
                            f'STALE home to {PA} (mutant stalehome), sharers+={PA}')
                return self.fwd_share(m, p, A, self.holder(m, sh), 'R')
            if owner >= 0:
                self.to_p(m, owner, ('Downgrade', p))
                g[4] = ('F', A, 1 << owner, owner)
                return f'Downgrade({pn}) to P{owner+1}, busy'
            self.to_p(m, A, ('Data', p, home, mode))
            g[2] = sh | (1 << A)
            return f'Data({pn},{fmt_bytes(home, self.pages[p])},mode={mode}) to {PA}, sharers+={PA}'
        if kind == 'Own':
            pre = ''
            if mode == 'U' and cfg.own_in_u == 'data':
                if args:        # forced Own (store cannot be replayed): rule 3 as today
                    g[0] = 'I'; pre = 'forced Own in mode U: mode U->I; '
                else:
                    self.to_p(m, A, ('OwnData', p, home, 'U'))
                    g[2] = sh | (1 << A)
                    return (f'mode is U -> OwnData({pn},{fmt_bytes(home, self.pages[p])},mode=U) '
                            f'to {PA} (stays U), sharers+={PA}')
            elif mode == 'U':
                if cfg.own_in_u == 'retry':
                    self.to_p(m, A, ('Retry', p, 'U'))
                    return f'mode is U -> Retry({pn},mode=U) to {PA}'
                if cfg.own_in_u == 'switch':
                    g[0] = 'I'; pre = 'mode U->I (Own acts as switch request); '
                else:
                    pre = '(mode U ignored!) '
            if owner == A:
                raise ProtoErr(f'C: Own({pn}) from its owner {PA}')
            if owner >= 0 and self.fwd_own and g[0] == 'I' and self.fwd_now(m):   # Task C rule 2
                if sh:
                    raise ProtoErr(f'C: {pn} has owner P{owner+1} and sharers')
                self.to_p(m, owner, ('FwdGive', p, A))
                what = pre + f'FwdGive({pn},to={PA}) to P{owner+1}' + self.fwd_note(m, p, A, owner)
                if self.mut == 'early':
                    g[1] = A; g[2] = 0
                    return what + f', owner={PA} now (mutant early)'
                g[4] = ('FO', A, 1 << A, owner)
                return what + ', busy until Got'
            targets = sh & ~(1 << A)
            aw = targets if cfg.inv_wait else 0
            H = -1
            if owner < 0 and not g[6] and not (sh >> A) & 1:
                # Task C rule 3: stale home, requester holds no copy: one holder
                # returns the data (InvData), the others are invalidated
                H = self.holder(m, sh)
                targets &= ~(1 << H)
            acts = [f'Inv({pn}) to P{s+1}' for s in bits(targets)]
            for s in bits(targets):
                self.to_p(m, s, ('Inv', p))
            if H >= 0:
                self.to_p(m, H, ('InvData', p))
                acts.append(f'InvData({pn}) to P{H+1}')
            if owner >= 0:
                self.to_p(m, owner, ('Recall', p))
                aw |= 1 << owner
                acts.append(f'Recall({pn}) to P{owner+1}')
            if aw == 0:
                g[1] = A; g[2] = 0
                gm = self.grant_msg(g, p, A, sh)
                self.to_p(m, A, gm)
                acts.append(f'{self.msgstr(gm)} to {PA}')
                return pre + ', '.join(acts)
            if not cfg.inv_wait:
                g[2] = 0
            g[4] = ('O', A, aw, owner)
            return pre + ', '.join(acts) + ', busy'
        if kind in ('Write', 'RMW'):
            k = args[0]
            if mode == 'I' and cfg.write_in_i == 'retry':
                self.to_p(m, A, ('Retry', p, 'I'))
                return f'mode is I -> Retry({pn},mode=I) to {PA}'
            if not g[6]:
                raise ProtoErr(f'C: {kind}({pn}) from {PA} would be applied to a STALE home')
            nb = list(home)
            if kind == 'Write':
                nv = args[1]
                ack = ('WriteAck', p)
            else:
                nv = home[k] + 1
                ack = ('RMWAck', p, home[k])
            nb[k] = nv
            g[3] = tuple(nb)
            tg = sh & ~(1 << A)
            for s in bits(tg):
                self.to_p(m, s, ('Update', p, k, nv))
            self.to_p(m, A, ack)
            ups = ''.join(f'Update({pn},{self.pages[p][k]}={nv}) to P{s+1}, ' for s in bits(tg))
            warn = '(mode I ignored!) ' if mode == 'I' else ''
            return warn + f'home.{self.pages[p][k]}={nv}, ' + ups + f'{self.msgstr(ack)} to {PA}'
        raise ProtoErr('bad request ' + kind)

    def fwd_now(self, m):
        """forward this transaction?  Always, or (fwd_mix) C's choice"""
        return not self.cfg.fwd_mix or m.pick((True, False))

    def holder(self, m, sh):
        """the sharer C uses while the home is stale (Task C): any (branch) or the
        smallest index"""
        hs = list(bits(sh))
        if not hs:
            raise ProtoErr('C: home is stale but there is no sharer')
        if self.cfg.fwd_holder == 'min' or len(hs) == 1:
            return hs[0]
        return m.pick(hs)

    def grant_msg(self, g, p, A, sh):
        """Grant with the home bytes, or (Task C) without data when the home is stale:
        the requester then upgrades its own RO copy"""
        if g[6]:
            return ('Grant', p, g[3], 'I')
        if not (sh >> A) & 1:
            raise ProtoErr(f'C: Grant({self.pn[p]}) to P{A+1} needs data but the home is stale')
        return ('Grant', p, None, 'I')

    def fwd_share(self, m, p, A, H, exp):
        """Task C rules 1 and 3: FwdShare to holder H (exp: its copy, 'W' owner or
        'R' sharer of a stale home); complete on Got from A"""
        g = m.pg(p)
        pn = self.pn[p]
        self.to_p(m, H, ('FwdShare', p, A, g[0], exp))
        what = f'FwdShare({pn},to=P{A+1}) to {"owner" if exp == "W" else "holder"} P{H+1}'
        what += self.fwd_note(m, p, A, H)
        if self.mut == 'early':
            g[1] = -1; g[2] = g[2] | (1 << H) | (1 << A); g[6] = False
            return (what + f', sharers+={{P{H+1},P{A+1}}}, '
                    f'owner=none, home stale now (mutant early)')
        g[4] = ('FF', A, 1 << A, H)
        return what + ', busy until Got'

    def fwd_note(self, m, p, A, H):
        """the fix: tell the requester on the C->R channel that forwarded data is
        coming; it applies the data only after this note, hence after every message C
        sent it before the forward started (e.g. Updates of other pages)"""
        if not self.cfg.fwd_note:
            return ''
        self.to_p(m, A, ('FwdNote', p, H))
        return f', FwdNote({self.pn[p]},from=P{H+1}) to P{A+1}'

    def complete(self, m, p):
        g = m.pg(p)
        kind, A, _, O = g[4]
        pn = self.pn[p]
        g[4] = None
        if kind == 'FF':
            g[1] = -1; g[2] = g[2] | (1 << O) | (1 << A); g[6] = False
            return (f' -> sharers={{{",".join("P%d" % (x+1) for x in bits(g[2]))}}}, owner=none, '
                    f'home stale, unbusy')
        if kind == 'FO':
            g[1] = A; g[2] = 0
            return f' -> owner=P{A+1}, unbusy'
        if kind == 'SF':
            g[0] = 'U'
            return f' -> home valid, switch done: mode=U, sharers unchanged, unbusy'
        if kind == 'F':
            g[2] = (1 << O) | (1 << A); g[1] = -1
            self.to_p(m, A, ('Data', p, g[3], g[0]))
            return (f' -> sharers={{P{O+1},P{A+1}}}, owner=none, '
                    f'Data({pn},{fmt_bytes(g[3], self.pages[p])},mode={g[0]}) to P{A+1}, unbusy')
        if kind == 'O':
            sh = g[2]
            g[1] = A; g[2] = 0
            gm = self.grant_msg(g, p, A, sh) if self.fwd else ('Grant', p, g[3], 'I')
            self.to_p(m, A, gm)
            return f' -> owner=P{A+1}, {self.msgstr(gm)} to P{A+1}, unbusy'
        if kind == 'S':
            g[1] = -1
            g[2] = (1 << O) if self.cfg.i2u == 'downgrade' else 0
            g[0] = 'U'
            return f' -> switch done: mode=U, owner=none, sharers={{{"P%d" % (O+1) if g[2] else ""}}}, unbusy'
        raise ProtoErr('bad busy')

    def t_crecv(self, m, i, j):
        ch = m.p2c[i]
        msg = ch[j]
        m.p2c[i] = ch[:j] + ch[j + 1:]
        if msg[0] == 'Run':       # each page of the run by the per-page rules, one step
            return f'C: run of {len(msg[1])} from P{i+1}: ' + '; '.join(
                self.c_handle(m, i, x)[len('C: '):] for x in msg[1])
        return self.c_handle(m, i, msg)

    def c_handle(self, m, i, msg):
        kind, p = msg[0], msg[1]
        g = m.pg(p)
        lab = f'C: recv {self.msgstr(msg)} from P{i+1}'
        if kind == 'COwn':
            # conditional Own (write-ahead): grant iff the page is free, else Denied;
            # never queued, never recalls or invalidates
            mode, owner, sh, home, busy, q = g[:6]
            if self.cfg.cown_ok == 'strict':
                ok = owner < 0 and sh == 0 and busy is None and not q and mode == 'I'
            elif self.cfg.cown_ok == 'nosharers':     # deliberately wrong (checker self-test)
                ok = owner < 0 and busy is None and not q and mode == 'I'
            elif self.cfg.cown_ok == 'noowner':       # deliberately wrong (checker self-test)
                ok = sh == 0 and busy is None and not q and mode == 'I'
            elif self.cfg.cown_ok == 'ignorebusy':    # variant: busy/queue not tested
                ok = owner < 0 and sh == 0 and mode == 'I'
            elif self.cfg.cown_ok == 'anymode':       # also grant in mode U (policy variant)
                ok = owner < 0 and sh == 0 and busy is None and not q
            else:
                raise KeyError(self.cfg.cown_ok)
            pn = self.pn[p]
            if ok:
                g[1] = i; g[2] = 0
                self.to_p(m, i, ('Grant', p, home, 'I'))
                return lab + f' -> page free: owner=P{i+1}, Grant({pn},{fmt_bytes(home, self.pages[p])})'
            self.to_p(m, i, ('Denied', p))
            return lab + f' -> not free -> Denied({pn})'
        if kind in ('Fetch', 'Own', 'Write', 'RMW'):
            defer = g[4] is not None or g[5]
            if defer and (kind in ('Fetch', 'Own') or self.cfg.write_busy == 'defer'):
                g[5] = g[5] + ((kind, i) + msg[2:],)
                return lab + ' -> page busy/queue non-empty: enqueue'
            return lab + ' -> ' + self.serve(m, p, kind, i, msg[2:])
        busy = g[4]
        bit = 1 << i
        if kind == 'Got':           # Task C: the requester has the forwarded data
            if self.mut == 'early':
                return lab + ' -> ignored (mutant early: completed when forwarding)'
            if busy is None or busy[0] not in ('FF', 'FO') or busy[1] != i:
                raise ProtoErr(lab + ', which C did not forward to')
            g[4] = (busy[0], busy[1], 0, busy[3])
            return lab + self.complete(m, p)
        if kind == 'InvAck' and not self.cfg.inv_wait:
            return lab + ' (InvAcks are not awaited: dropped)'
        if busy is None or not (busy[2] & bit):
            raise ProtoErr(lab + ' not awaited')
        if kind == 'InvAck':
            if busy[0] != 'O':
                raise ProtoErr(lab + ' unexpected')
            d = ''
        elif kind == 'DowngradeAck':
            if busy[0] not in ('F', 'S'):
                raise ProtoErr(lab + ' unexpected')
            g[3] = msg[2]; g[6] = True; d = f' -> home={fmt_bytes(msg[2], self.pages[p])}'
        elif kind == 'RecallAck':
            if busy[0] not in ('O', 'S'):
                raise ProtoErr(lab + ' unexpected')
            g[3] = msg[2]; g[6] = True; d = f' -> home={fmt_bytes(msg[2], self.pages[p])}'
        elif kind in ('InvDataAck', 'FlushAck'):
            if busy[0] != ('O' if kind == 'InvDataAck' else 'SF'):
                raise ProtoErr(lab + ' unexpected')
            g[3] = msg[2]; g[6] = True
            d = f' -> home={fmt_bytes(msg[2], self.pages[p])} (valid)'
        else:
            raise ProtoErr('unknown ' + kind)
        aw = busy[2] & ~bit
        g[4] = (busy[0], busy[1], aw, busy[3])
        if aw == 0:
            d += self.complete(m, p)
        return lab + d

    def t_drain(self, m, p):
        g = m.pg(p)
        req = g[5][0]
        g[5] = g[5][1:]
        kind, A = req[0], req[1]
        msg = (kind, p) + req[2:]
        return (f'C: dequeue {self.msgstr(msg)} from P{A+1} -> '
                + self.serve(m, p, kind, A, req[2:]))

    def t_switch(self, m, p):
        g = m.pg(p)
        pn = self.pn[p]
        if g[0] == 'U':
            g[0] = 'I'
            return f'C: switch({pn}) U->I (mode:=I, nothing else)'
        if g[1] < 0:
            if not g[6]:            # Task C: stale home, flush it from a holder first
                H = self.holder(m, g[2])
                self.to_p(m, H, ('Flush', p))
                g[4] = ('SF', -1, 1 << H, H)
                return f'C: switch({pn}) I->U: home stale -> Flush({pn}) to P{H+1}, busy'
            g[0] = 'U'
            return f'C: switch({pn}) I->U (no owner; mode:=U)'
        O = g[1]
        msg = ('Downgrade', p) if self.cfg.i2u == 'downgrade' else ('Recall', p)
        self.to_p(m, O, msg)
        g[4] = ('S', -1, 1 << O, O)
        pre = ''
        if self.cfg.flip == 'before':
            g[0] = 'U'; pre = 'mode:=U now (!), '
        return f'C: switch({pn}) I->U: {pre}{msg[0]}({pn}) to P{O+1}, busy'

    # ------------------------------------------------------- successors
    def successors(self, s):
        """list of (label, newstate|None, error|None, is_switch)"""
        procs, c2p, p2c, pages, aux = s[0], s[1], s[2], s[3], s[6]
        res = []
        fifo = self.cfg.fifo
        runs = self.cfg.runs

        def run(fn, *a, sw=False, budget_p=None):
            vec = (); stack = None
            while True:              # one successor per vector of choices (Mut.pick)
                m = self.mk(s, vec)
                try:
                    lab = fn(m, *a)
                except ProtoErr as e:
                    lab = None
                    res.append((str(e), None, str(e), sw))
                if m.picks:          # enumerate the other choices (also after an error)
                    if stack is None:
                        stack = []
                    for j in range(len(vec), len(m.picks)):
                        pre = tuple(c for c, _ in m.picks[:j])
                        for c in range(m.picks[j][1] - 1, 0, -1):
                            stack.append(pre + (c,))
                if lab is not None:  # None: not a transition (e.g. piggyback on a local access)
                    m.flush(runs)
                    if budget_p is not None and m.sb is not None:
                        b = list(m.sb); b[budget_p] -= 1; m.sb = tuple(b)
                    if m.aux is not None:    # an instruction completed: clear esc and attempts
                        for q in range(self.N):
                            if m.procs[q][0] != procs[q][0] and (m.aux[q][2] or m.aux[q][3]):
                                m.setaux(q, esc=0, att=0)
                    res.append((lab, m.freeze(), None, sw))
                if not stack:
                    return
                vec = stack.pop()

        def idxs(ch):
            if fifo:
                return (0,)
            seen = set(); out = []
            for j, x in enumerate(ch):
                if x not in seen:
                    seen.add(x); out.append(j)
            return out

        for i in range(self.N):
            if self.dmode and s[8][1][i] != 'A':    # Task D: crashed or detached
                continue
            pc, blk, copies = procs[i]
            cur = self.PAGE[self.progs[i][pc][1]] if pc < len(self.progs[i]) else -1
            if aux is None:
                if blk is None and cur >= 0:
                    run(self.t_exec, i)
            else:
                pend = aux[i][1]
                # a local access to a page with an ahead request pending waits for the answer
                if blk is None and cur >= 0 and not pend[cur]:
                    run(self.t_exec, i)
                budget = aux[i][0]
                if self.ahead_total is not None:
                    budget = min(budget, self.ahead_total - sum(
                        b0 - a[0] for b0, a in zip(self.ab0, aux)))
                if budget > 0 and (cur >= 0 or self.cfg.ahead_done):
                    # pages held Invalid with nothing pending (not the page a blocked
                    # instruction waits for)
                    elig = tuple((p, copies[p][0]) for p in range(self.NP)
                                 if copies[p][0] in self.elig_cs and not pend[p]
                                 and not (blk is not None and p == cur))
                    if elig:
                        for reqs in self.ahead_choices(elig, budget):
                            run(self.t_ahead, i, reqs)
                        if runs and blk is None and cur >= 0 and not pend[cur]:
                            e2 = tuple(pc_ for pc_ in elig if pc_[0] != cur)
                            if e2:       # a fault that also asks for other pages
                                for reqs in self.ahead_choices(e2, budget):
                                    run(self.t_exec, i, reqs)
            if c2p[i]:
                for j in idxs(c2p[i]):
                    run(self.t_precv, i, j)
        if s[7] is not None and not self.dmode:   # Task C: peer channels P_src -> P_dst
            notes = s[7][1]
            for c, ch in enumerate(s[7][0]):
                if ch:
                    for j in idxs(ch):
                        # with the fix, forwarded data waits for its FwdNote
                        if self.cfg.fwd_note and not self.noted(ch[j], notes[c % self.N]):
                            continue
                        run(self.t_peer, c, j)
        for i in range(self.N):
            if p2c[i]:
                for j in idxs(p2c[i]):
                    run(self.t_crecv, i, j)
        for p in range(self.NP):
            if pages[p][4] is None and pages[p][5]:
                run(self.t_drain, p)
        if self.cfg.switch:
            for p in range(self.NP):
                if pages[p][4] is None and (s[5] is None or s[5][p] > 0):
                    run(self.t_switch, p, sw=True, budget_p=p)
        return res

    dmode = False                    # Task D model (dsm_faults.ModelD)

    def mk(self, s, vec):
        return Mut(s, vec)

    # ------------------------------------------------------- predicates
    def all_done(self, s):
        return all(pr[1] is None and pr[0] == len(self.progs[i])
                   for i, pr in enumerate(s[0]))

    def quiescent(self, s):
        return (not any(s[1]) and not any(s[2])
                and all(g[4] is None and not g[5] for g in s[3])
                and (s[7] is None or not any(s[7][0])))

    def final_mem(self, s):
        """the owner's copy, else the home if valid, else (Task C, stale home) the
        copy of the lowest-numbered RO holder"""
        out = []
        for l in self.locs:
            p, k = self.PAGE[l], self.IDX[l]
            g = s[3][p]
            if g[1] >= 0:
                out.append(s[0][g[1]][2][p][1][k])
            elif g[6]:
                out.append(g[3][k])
            else:
                hs = [pr[2][p][1] for pr in s[0] if pr[2][p][0] == 'R']
                out.append(hs[0][k] if hs else g[3][k])
        return tuple(out)

    def coherence_problem(self, s):
        """checked at quiescent states: directory == caches, RO copies == home (Task C:
        with a stale home and no owner, the sharers all hold RO copies, all equal)"""
        ref = [next((pr[2][p][1] for pr in s[0] if pr[2][p][0] == 'R'), None)
               for p in range(self.NP)]
        for p in range(self.NP):
            g = s[3][p]
            for i in range(self.N):
                cs, by, _ = s[0][i][2][p]
                if cs == 'W' and g[1] != i:
                    return f'P{i+1} has W copy of {self.pn[p]} but owner is {g[1]+1}'
                if cs == 'R':
                    if g[1] >= 0:
                        return f'P{i+1} RO copy while P{g[1]+1} owns {self.pn[p]}'
                    if g[6] and by != g[3]:
                        return f'P{i+1} RO copy {by} != home {g[3]} of {self.pn[p]}'
                    if not g[6] and by != ref[p]:
                        return f'P{i+1} RO copy {by} != another RO copy {ref[p]} of {self.pn[p]} (home stale)'
                    if not (g[2] >> i) & 1:
                        return f'P{i+1} RO copy of {self.pn[p]} not in sharers'
            if g[1] >= 0 and s[0][g[1]][2][p][0] != 'W':
                return f'owner P{g[1]+1} of {self.pn[p]} has no W copy'
            if g[1] < 0 and not g[6]:
                if not g[2]:
                    return f'home of {self.pn[p]} stale, no owner and no sharers'
                for i in bits(g[2]):
                    if s[0][i][2][p][0] != 'R':
                        return f'home of {self.pn[p]} stale but sharer P{i+1} holds no RO copy'
        if s[6] is not None:
            for i, a in enumerate(s[6]):
                if any(a[1]):
                    return f'P{i+1} still has an ahead request pending at quiescence'
        if s[7] is not None:
            for i, nt in enumerate(s[7][1]):
                if nt:
                    return f'P{i+1} still holds a FwdNote at quiescence'
        return None

    def swmr_problem(self, s):
        """Single-writer/multiple-reader per page, checked in every state."""
        for p in range(self.NP):
            w = [i for i in range(self.N) if s[0][i][2][p][0] == 'W']
            r = [i for i in range(self.N) if s[0][i][2][p][0] == 'R']
            if len(w) > 1 or (w and r):
                return (f'{self.pn[p]}: W copies at {["P%d" % (x+1) for x in w]}, '
                        f'RO copies at {["P%d" % (x+1) for x in r]}')
        return None


# --------------------------------------------------------------------------
# exhaustive search
# --------------------------------------------------------------------------
class Result:
    pass


# Task C coverage: transitions whose label shows a forward event (counted over all
# transitions of the search, only with forward != 'none')
FWD_EVENTS = (('share-owner', 'to owner P'), ('share-holder', 'to holder P'),
              ('give', 'FwdGive('), ('got', 'recv Got('),
              ('upgrade-nodata', 'no data: upgrade'), ('invdata', 'InvData('),
              ('flush', 'Flush('), ('peer-run', '] run of'))


# Task D coverage (only with fwd_d)
FWD_D_EVENTS = (('forward', 'Forward('), ('got', 'recv Got('), ('abort', 'ABORT'),
                ('restart', 'restart the Fetch'), ('d3', 'D3:'), ('d4', 'D4 source lost'),
                ('d4b', 'D4b'), ('d6', 'D6 requester'), ('d7', 'no reader left'),
                ('d10', 'D10'), ('flush', 'flush: Downgrade'), ('flush-none', 'flush: no copy'),
                ('skip', 'skip'), ('kept', 'keep the data'), ('drop-pages', 'drop Pages'),
                ('peer-fail', 'FAILS'), ('ambiguous', 'delivered anyway'),
                ('unreachable', 'unreachable'), ('release', 'release'), ('detach', 'detach'),
                ('crash', 'CRASH'), ('late-return', 'late return'),
                ('upgrade-nodata', 'no data: upgrade'), ('reflush', 'Downgrade to P'),
                # Task E (backup copies)
                ('bk-inv', 'InvBackup('), ('bk-drop', 'DropBackup('), ('bk-restore', 'RestoreBackup('),
                ('bk-home', 'BackupHome('), ('bk-restored', 'restored'), ('bk-lost', 'backups all lost'),
                ('bk-again', 'older backups'))


def fwd_cover(lab, cover, dmode=False):
    if dmode:
        for k, kw in FWD_D_EVENTS:
            if kw in lab:
                if k == 'forward' and not lab.startswith('C:'):
                    continue
                cover[k] = cover.get(k, 0) + 1
        return
    for k, kw in FWD_EVENTS:
        if kw in lab:
            if k == 'give' and not lab.startswith('C:'):
                continue
            cover[k] = cover.get(k, 0) + 1


def explore(test, cfg, want_stuck=True):
    if cfg.fwd_d:
        import dsm_faults
        M = dsm_faults.ModelD(test, cfg)
    else:
        M = Model(test, cfg)
    sc = sc_outcomes(test)
    sc_regs = {r for r, _ in sc}
    init = M.initial()
    dumps = lambda o: marshal.dumps(o, 2)   # version 2: no identity-based refs -> canonical
    index = {dumps(init): 0}
    parent = array('i', [-1])
    choice = array('H', [0])
    frontier = deque([(0, init)])
    R = Result()
    R.model, R.test, R.cfg, R.sc = M, test, cfg, sc
    R.outcomes = {}        # outcome -> state id (quiescent done)
    R.reg_viol = {}        # regs -> state id (all done, regs not SC)
    R.errors = {}          # error msg -> parent id, choice
    R.deadlocks = []       # state ids
    R.incoherent = {}      # msg -> id
    R.swmr = None          # (msg, id)
    R.transitions = 0
    R.maxmsgs = 0
    R.maxatt = 0           # most requests sent for one instruction (count_attempts)
    R.maxatt_id = None
    R.cover = {}           # Task C: forward events seen (FWD_EVENTS)
    fwd = cfg.forward != 'none'
    good_ids = []
    esrc = array('i'); edst = array('i'); eretry = bytearray()
    t0 = time.time()
    while frontier:
        sid, s = frontier.popleft()
        succ = M.successors(s)
        R.transitions += len(succ)
        nonswitch = 0
        for c, (lab, ns, err, sw) in enumerate(succ):
            if not sw:
                nonswitch += 1
            if fwd:
                fwd_cover(lab, R.cover, M.dmode)
            if err is not None:
                if err not in R.errors:
                    R.errors[err] = (sid, c)
                continue
            key = dumps(ns)
            nid = index.get(key)
            if nid is None:
                nid = len(parent)
                index[key] = nid
                parent.append(sid); choice.append(c)
                frontier.append((nid, ns))
                if len(parent) > cfg.max_states:
                    raise RuntimeError('state limit exceeded')
            if want_stuck and sw != 'env':   # Task D: failures are not needed to finish
                esrc.append(sid); edst.append(nid)
                eretry.append(1 if ('recv Retry' in lab or 'recv OwnData' in lab
                                    or 'recv Denied' in lab or 'recv ForwardAbort' in lab) else 0)
        # inspect s
        nm = sum(len(x) for x in s[1]) + sum(len(x) for x in s[2])
        if s[7] is not None:
            nm += sum(len(x) for x in s[7][0])
        if nm > R.maxmsgs:
            R.maxmsgs = nm
        if s[6] is not None:
            for a in s[6]:
                if a[3] > R.maxatt:
                    R.maxatt = a[3]; R.maxatt_id = sid
        if R.swmr is None:
            w = M.swmr_problem(s)
            if w:
                R.swmr = (w, sid)
        done = M.all_done(s)
        if done:
            regs = s[4]
            okregs = sc_regs
            if M.dmode:             # Task D: a crashed process's registers are not outcomes
                regs = M.sc_key(s)
                if len(regs) > len(M.reglist):
                    okregs = {r for r, _ in M.allowed(regs)}
            if regs not in okregs and regs not in R.reg_viol:
                R.reg_viol[regs] = sid
            if M.quiescent(s):
                good_ids.append(sid)
                oc = (regs, M.final_mem(s))
                if oc not in R.outcomes:
                    R.outcomes[oc] = sid
                cp = M.coherence_problem(s)
                if cp and cp not in R.incoherent:
                    R.incoherent[cp] = sid
                continue
        if nonswitch == 0 and not (done and M.quiescent(s)):
            R.deadlocks.append(sid)
    R.states = len(parent)
    R.parent, R.choice = parent, choice
    R.index = index
    R.time = time.time() - t0
    R.nonsc = {oc: i for oc, i in R.outcomes.items() if oc not in sc and not (
        M.dmode and len(oc[0]) > len(M.reglist) and oc in M.allowed(oc[0]))}
    R.stuck = None
    R.livelock = None
    if want_stuck:
        R.stuck = stuck_states(R.states, esrc, edst, good_ids)
        if any(eretry):
            R.livelock = retry_cycle(R.states, esrc, edst, eretry)
    return R


def retry_cycle(n, esrc, edst, eretry):
    """Find a cycle that contains a Retry delivery (a process can be bounced
    forever).  Returns (u, v, cycle_path_ids) or None.  Iterative Tarjan."""
    # forward CSR (esrc is non-decreasing because BFS expands in id order)
    start = array('i', bytes(4 * (n + 1)))
    for s_ in esrc:
        start[s_ + 1] += 1
    for i in range(1, n + 1):
        start[i] += start[i - 1]
    index = array('i', [-1]) * n
    low = array('i', bytes(4 * n))
    comp = array('i', [-1]) * n
    onstack = bytearray(n)
    st = []
    counter = 0
    ncomp = 0
    for root in range(n):
        if index[root] != -1:
            continue
        work = [(root, start[root])]
        index[root] = low[root] = counter; counter += 1
        st.append(root); onstack[root] = 1
        while work:
            v, k = work[-1]
            if k < start[v + 1]:
                work[-1] = (v, k + 1)
                w = edst[k]
                if index[w] == -1:
                    index[w] = low[w] = counter; counter += 1
                    st.append(w); onstack[w] = 1
                    work.append((w, start[w]))
                elif onstack[w]:
                    if index[w] < low[v]:
                        low[v] = index[w]
                continue
            work.pop()
            if work:
                u = work[-1][0]
                if low[v] < low[u]:
                    low[u] = low[v]
            if low[v] == index[v]:
                while True:
                    w = st.pop(); onstack[w] = 0; comp[w] = ncomp
                    if w == v:
                        break
                ncomp += 1
    for k in range(len(esrc)):
        # esrc is non-decreasing and BFS ids grow with depth: the first bounce edge
        # inside an SCC has the shortest prefix
        if eretry[k] and comp[esrc[k]] == comp[edst[k]]:
            u, v = esrc[k], edst[k]
            # path v -> u inside the SCC (BFS)
            c = comp[u]
            prev = {v: None}
            dq = deque([v])
            while dq:
                x = dq.popleft()
                if x == u:
                    break
                for kk in range(start[x], start[x + 1]):
                    y = edst[kk]
                    if comp[y] == c and y not in prev:
                        prev[y] = x; dq.append(y)
            path = []
            x = u
            while x is not None:
                path.append(x); x = prev[x]
            path.reverse()          # v ... u
            return (u, v, path)
    return None


def stuck_states(n, esrc, edst, good):
    """states from which no quiescent all-done state is reachable"""
    indeg = array('i', bytes(4 * (n + 1)))
    for d in edst:
        indeg[d + 1] += 1
    for i in range(1, n + 1):
        indeg[i] += indeg[i - 1]
    start = array('i', indeg)
    rev = array('i', bytes(4 * len(esrc)))
    pos = array('i', start)
    for s_, d in zip(esrc, edst):
        rev[pos[d]] = s_
        pos[d] += 1
    ok = bytearray(n)
    stack = list(good)
    for g in good:
        ok[g] = 1
    while stack:
        d = stack.pop()
        for k in range(start[d], start[d + 1]):
            s_ = rev[k]
            if not ok[s_]:
                ok[s_] = 1
                stack.append(s_)
    bad = [i for i in range(n) if not ok[i]]
    return bad


def trace(R, sid, extra_choice=None):
    """Replay the shortest path to state sid; returns list of labels."""
    M = R.model
    path = []
    x = sid
    while x > 0:
        path.append(R.choice[x]); x = R.parent[x]
    path.reverse()
    if extra_choice is not None:
        path.append(extra_choice)
    s = M.initial()
    labs = []
    for c in path:
        lab, ns, err, sw = M.successors(s)[c]
        labs.append(lab)
        if ns is None:
            break
        s = ns
    return labs, s


def fmt_outcome(R, oc):
    regs, mem = oc
    M = R.model
    a = ','.join(f'{r}={v}' for r, v in zip(M.reglist, regs))
    b = ','.join(f'{l}={v}' for l, v in zip(M.locs, mem))
    if len(regs) > len(M.reglist):    # Task D: a crash run
        c, pc, blk = regs[-1]
        b += f'] (P{c+1} crashed at pc={pc}{", blocked" if blk else ""}'
    return f'{a}{";" if a else ""}[{b}]'


def summarize(R, show_traces=True, max_traces=2, show_livelock=False):
    M, test = R.model, R.test
    lines = []
    bad = bool(R.nonsc or R.reg_viol or R.errors or R.deadlocks or R.stuck
               or R.incoherent)
    lines.append(f'{test["name"]:7s} layout={R.cfg.layout:6s} modes={"".join(R.cfg.modes):2s} '
                 f'states={R.states:8d} trans={R.transitions:9d} outcomes={len(R.outcomes):2d}/SC={len(R.sc):2d} '
                 f'nonSC={len(R.nonsc)} regviol={len(R.reg_viol)} err={len(R.errors)} '
                 f'deadlock={len(R.deadlocks)} stuck={len(R.stuck) if R.stuck is not None else "-"} '
                 f'incoh={len(R.incoherent)} swmr={"Y" if R.swmr else "n"} '
                 f'retrycycle={"-" if R.stuck is None else ("Y" if R.livelock else "n")} maxmsgs={R.maxmsgs} '
                 + (f'maxatt={R.maxatt}{"+" if R.maxatt >= ATT_CAP else ""} ' if R.cfg.count_attempts else '')
                 + f'{"VIOLATION" if bad else "ok"} ({R.time:.1f}s)'
                 + (' fwd[' + ' '.join(f'{k}={v}' for k, v in sorted(R.cover.items())) + ']'
                    if R.cfg.forward != 'none' else ''))
    missing = R.sc - set(R.outcomes)
    if missing and not bad:
        lines.append('    (SC outcomes not produced: ' +
                     '; '.join(fmt_outcome(R, o) for o in sorted(missing, key=str)) + ')')
    if show_traces:
        shown = 0
        items = []
        for regs, sid in R.reg_viol.items():
            items.append((f'non-SC registers {fmt_outcome(R, (regs, ()))}', sid, None))
        for oc, sid in R.nonsc.items():
            if oc[0] not in R.reg_viol:
                items.append((f'non-SC outcome {fmt_outcome(R, oc)}', sid, None))
        for e, (sid, c) in R.errors.items():
            items.append((f'protocol error: {e}', sid, c))
        for e, sid in R.incoherent.items():
            items.append((f'incoherent final state: {e}', sid, None))
        for sid in R.deadlocks[:1]:
            items.append(('DEADLOCK', sid, None))
        if R.stuck:
            items.append((f'STUCK (cannot finish) e.g.', R.stuck[0], None))
        if R.livelock and show_livelock:
            u, v, path = R.livelock
            labs, s = trace(R, u)
            cyc = []
            ids = [u] + path
            for a, b in zip(ids, ids[1:]):
                for lab, ns, err, sw in R.model.successors(s):
                    if ns is not None and R.index.get(marshal.dumps(ns, 2)) == b:
                        cyc.append(lab); s = ns
                        break
            lines.append(f'  -- RETRY CYCLE (livelock under adversarial switching): prefix {len(labs)} steps, then repeat:')
            for k, l in enumerate(labs, 1):
                lines.append(f'     p{k:2d}. {l}')
            for k, l in enumerate(cyc, 1):
                lines.append(f'     c{k:2d}. {l}')
        items.sort(key=lambda it: depth(R, it[1]))
        if show_livelock and R.maxatt_id is not None:
            items.append((f'most requests for one instruction ({R.maxatt})', R.maxatt_id, None))
        for what, sid, c in items[:max_traces + (show_livelock and R.maxatt_id is not None)]:
            labs, _ = trace(R, sid, c)
            lines.append(f'  -- {what}  (trace, {len(labs)} steps)')
            for k, l in enumerate(labs, 1):
                lines.append(f'     {k:2d}. {l}')
    return bad, '\n'.join(lines)


def depth(R, sid):
    d = 0
    while sid > 0:
        sid = R.parent[sid]; d += 1
    return d


# --------------------------------------------------------------------------
# drivers
# --------------------------------------------------------------------------
MAIN_TESTS = ['SB', 'MP', 'LB', 'IRIW', 'WRC', '2+2W', 'CoRR', 'RMW']
EXTRA_TESTS = ['SB+pre', 'MP+pre', 'RMW+W']


def configs_for(test, layouts=('sep', 'shared')):
    nl = len(test_locs(test))
    for layout in layouts:
        if layout == 'shared' and nl < 2:
            continue
        np_ = nl if layout == 'sep' else 1
        for modes in itertools.product('IU', repeat=np_):
            yield layout, modes


def configs_pad(test, layouts=('sep', 'shared'), pad='no'):
    """like configs_for, yielding Cfg keyword dicts; pad: 'no' | 'yes' | 'auto'
    (auto = add the untouched page 'pad' to one-location tests in layout sep;
    auto1 = the same with the pad page starting in mode I only)"""
    nl = len(test_locs(test))
    for layout, modes in configs_for(test, layouts):
        pd = pad == 'yes' or (pad in ('auto', 'auto1') and nl == 1 and layout == 'sep')
        if not pd:
            yield dict(layout=layout, modes=modes)
        else:
            # 'auto1': pad page starts in mode I only (with switches its mode is free anyway)
            for pm in ('I' if pad == 'auto1' else 'IU'):
                yield dict(layout=layout, modes=modes + (pm,), pad=True)


def run_suite(tests, base, out, show_traces=True, want_stuck=True, layouts=('sep', 'shared'),
              pad='no', summary=None):
    nbad = 0
    tot = 0
    t0 = time.time()
    for name in tests:
        test = TESTS[name]
        for kw in configs_pad(test, layouts, pad):
            cfg = Cfg(**base, **kw)
            R = explore(test, cfg, want_stuck=want_stuck)
            bad, txt = summarize(R, show_traces=show_traces)
            if summary is not None:
                summary.append((name, kw, R))
            nbad += bad
            tot += R.states
            print(txt, file=out, flush=True)
            if out is not sys.stdout:
                print(txt.split('\n')[0], flush=True)
    if summary is None:
        print(f'# total states {tot}, violating configurations {nbad}', file=out, flush=True)
    else:
        ncyc = sum(1 for _, _, R in summary if R.livelock)
        print(f'# total states {tot}, violating configurations {nbad}, '
              f'retry/answer-cycle configurations {ncyc}, '
              f'max attempts per instruction {max((R.maxatt for _, _, R in summary), default=0)}, '
              f'{time.time() - t0:.0f}s', file=out, flush=True)
    return nbad


ABLATIONS = [
    # (name, phase-2?, cfg overrides, description)
    ('P1-no-inv-ack-wait', False, dict(inv_wait=False),
     'Own: send Grant right after sending Invs (do not wait for InvAcks)'),
    ('P1-write-no-block', False, dict(write_block=False),
     'U-mode writer continues right after sending Write (no WriteAck wait)'),
    ('P1-nonatomic-read', False, dict(atomic_read=False),
     'Data only unblocks; the read re-executes later (may re-fetch)'),
    ('P1-write-without-RO', False, dict(write_needs_ro=False),
     'U-mode Write/RMW sent without first fetching an RO copy'),
    ('P1-non-FIFO', False, dict(fifo=False),
     'channels not FIFO (assumption check)'),
    ('P2-baseline-recall', True, dict(i2u='recall'),
     'phase-2 rules, I->U makes former owner Invalid instead of RO'),
    ('P2-own-in-U-retry', True, dict(own_in_u='retry'),
     'Own arriving in U mode answered with Retry(U) (instead of acting as a switch request)'),
    ('P2-own-in-U-grant', True, dict(own_in_u='grant'),
     'Own arriving in U mode served as a normal Own, mode stays U (BUG?)'),
    ('P2-write-in-I-accept', True, dict(write_in_i='accept'),
     'Write/RMW arriving in I mode applied to home anyway (BUG?)'),
    ('P2-no-inv-ack-wait', True, dict(inv_wait=False),
     'phase-2 rules, but Own grants without waiting for InvAcks'),
    ('P2-write-without-RO', True, dict(write_needs_ro=False),
     'phase-2 rules, but U-mode Write/RMW sent without holding an RO copy'),
    ('P2-flip-before+serve', True, dict(flip='before', write_busy='serve'),
     'I->U sets mode:=U before the recall ack; Write not deferred while busy (literal phase-1 Write rule)'),
    ('P2-flip-before+defer', True, dict(flip='before', write_busy='defer'),
     'I->U sets mode:=U before the recall ack; Writes deferred while busy'),
    ('P2-flip-after+serve', True, dict(flip='after', write_busy='serve'),
     'mode:=U after the recall ack; Writes served (Retry) even while busy'),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('what', choices=['phase1', 'phase2', 'ablations', 'one', 'sc'])
    ap.add_argument('test', nargs='?')
    ap.add_argument('--layout', default='sep')
    ap.add_argument('--modes', default=None)
    ap.add_argument('--switch', action='store_true')
    ap.add_argument('--budget', type=int, default=None)
    ap.add_argument('--extra', action='store_true', help='include extra tests')
    ap.add_argument('--tests', default=None, help='comma separated')
    ap.add_argument('--no-stuck', action='store_true')
    ap.add_argument('--trace', action='store_true')
    ap.add_argument('--only', default=None, help='ablation names, comma separated')
    for k in ('i2u', 'own_in_u', 'write_in_i', 'write_busy', 'flip'):
        ap.add_argument('--' + k.replace('_', '-'), default=None)
    for k in ('inv_wait', 'write_block', 'atomic_read', 'fifo', 'write_needs_ro'):
        ap.add_argument('--no-' + k.replace('_', '-'), action='store_true')
    # Task A / Task B options (README: "Runs and ahead requests", "Adaptive update mode")
    ap.add_argument('--ahead', default=None, choices=['none', 'read', 'write', 'both', 'own', 'all'])
    ap.add_argument('--ahead-budget', type=int, default=None)
    ap.add_argument('--ahead-total', type=int, default=None)
    ap.add_argument('--ahead-procs', default=None, help='1-based process numbers, e.g. 3,4')
    ap.add_argument('--ahead-done', action='store_true', help='finished processes may still send ahead')
    ap.add_argument('--runs', action='store_true')
    ap.add_argument('--pad', default=None, choices=['no', 'yes', 'auto'],
                    help='add an untouched page (auto: one-location tests only)')
    ap.add_argument('--layouts', default=None, help='phase1/phase2: e.g. sep or sep,shared')
    ap.add_argument('--cown-ok', default=None, choices=['strict', 'nosharers', 'noowner', 'ignorebusy', 'anymode'])
    ap.add_argument('--forced', default=None, help='1-based process numbers whose stores are forced, e.g. 1')
    ap.add_argument('--escalate', default=None, choices=['none', 'retry', 'owndata'])
    ap.add_argument('--count-attempts', action='store_true')
    # Task C (README: "Task C: direct forwards")
    ap.add_argument('--forward', default=None, choices=['none', 'fetch', 'own', 'both'])
    ap.add_argument('--fwd-holder', default=None, choices=['any', 'min'])
    ap.add_argument('--fwd-mutant', default=None, choices=['none', 'early', 'keepw', 'stalehome'])
    ap.add_argument('--fwd-mix', action='store_true',
                    help='C chooses per transaction whether to forward (branch)')
    ap.add_argument('--fwd-no-note', action='store_true',
                    help='forwards without FwdNote (the rule as first proposed; not SC)')
    # Task D (README: "Task D: forward failures"; dsm_faults.py)
    ap.add_argument('--fwd-d', action='store_true', help='the session-25 forward rules with failures')
    ap.add_argument('--fwd-stale-own', default=None, choices=['flush', 'invdata'])
    ap.add_argument('--fwd-upgrade', default=None, choices=['nodata', 'flush', 'backup'])
    ap.add_argument('--fwd-backup-again', default=None, choices=['flush', 'roll'])
    ap.add_argument('--fwd-bkmut', default=None, choices=['none', 'earlyrelease', 'norestore',
                                                          'nowait', 'bkdetachdrop', 'restoreany'])
    ap.add_argument('--fwd-wb', type=int, default=None, help='releases (one-page Writebacks) per run')
    ap.add_argument('--fwd-detach', type=int, default=None, help='clean detaches per run')
    ap.add_argument('--fwd-peerfail', type=int, default=None, help='failed peer sends per run')
    ap.add_argument('--fwd-crash', default=None, help='1-based processes that may crash (one crash per run)')
    ap.add_argument('--fwd-abort-mark', default=None, choices=['note', 'sticky', 'none'])
    ap.add_argument('--fwd-flush-lost', default=None, choices=['reflush', 'home'])
    ap.add_argument('--fwd-d3', default=None, choices=['asis', 'always'])
    ap.add_argument('--fwd-late-return', default=None, choices=['accept', 'ignore'])
    ap.add_argument('--fwd-return-id', action='store_true', help='ForwardReturn carries (to, req)')
    ap.add_argument('--fwd-dmut', default=None, choices=['none', 'acceptaborted', 'nohandshake',
                                                         'noskip', 'detachdrop', 'flushdrop'])
    a = ap.parse_args()
    over = {}
    if a.fwd_d:
        over['fwd_d'] = True
        over['forward'] = 'fetch'
    if a.fwd_return_id:
        over['fwd_return_id'] = True
    if a.fwd_crash:
        over['fwd_crash'] = tuple(int(x) - 1 for x in a.fwd_crash.split(','))
    for k in ('fwd_stale_own', 'fwd_upgrade', 'fwd_wb', 'fwd_detach', 'fwd_peerfail',
              'fwd_abort_mark', 'fwd_flush_lost', 'fwd_dmut', 'fwd_d3', 'fwd_late_return',
              'fwd_backup_again', 'fwd_bkmut'):
        if getattr(a, k) is not None:
            over[k] = getattr(a, k)
    for k in ('i2u', 'own_in_u', 'write_in_i', 'write_busy', 'flip'):
        if getattr(a, k) is not None:
            over[k] = getattr(a, k)
    for k in ('inv_wait', 'write_block', 'atomic_read', 'fifo', 'write_needs_ro'):
        if getattr(a, 'no_' + k):
            over[k] = False
    if a.ahead_procs:
        over['ahead_procs'] = tuple(int(x) - 1 for x in a.ahead_procs.split(','))
    if a.ahead_done:
        over['ahead_done'] = True
    for k in ('ahead', 'ahead_budget', 'ahead_total', 'cown_ok', 'escalate',
              'forward', 'fwd_holder', 'fwd_mutant'):
        if getattr(a, k) is not None:
            over[k] = getattr(a, k)
    if a.runs:
        over['runs'] = True
    if a.count_attempts:
        over['count_attempts'] = True
    if a.fwd_no_note:
        over['fwd_note'] = False
    if a.fwd_mix:
        over['fwd_mix'] = True
    if a.forced:
        over['forced'] = tuple(int(x) - 1 for x in a.forced.split(','))
    layouts = tuple(a.layouts.split(',')) if a.layouts else ('sep', 'shared')
    pad = a.pad or 'no'
    newopts = bool(set(over) & {'ahead', 'ahead_budget', 'ahead_total', 'ahead_procs',
                                'ahead_done', 'runs', 'cown_ok', 'escalate',
                                'count_attempts', 'forced', 'forward', 'fwd_holder',
                                'fwd_mutant', 'fwd_note', 'fwd_mix', 'fwd_d'}) or a.pad or a.layouts
    summary = [] if newopts else None
    tests = MAIN_TESTS + (EXTRA_TESTS if a.extra else [])
    if a.tests:
        tests = a.tests.split(',')
    if a.what == 'sc':
        for n in tests:
            t = TESTS[n]
            print(n, sorted(sc_outcomes(t), key=str))
        return
    if a.what == 'one':
        test = TESTS[a.test]
        nl = len(test_locs(test))
        np_ = (nl if a.layout == 'sep' else 1) + (a.pad == 'yes')
        modes = tuple(a.modes) if a.modes else ('I',) * np_
        cfg = Cfg(layout=a.layout, modes=modes, switch=a.switch,
                  switch_budget=a.budget, pad=a.pad == 'yes', **over)
        R = explore(test, cfg, want_stuck=not a.no_stuck)
        bad, txt = summarize(R, show_traces=a.trace, max_traces=4, show_livelock=a.trace)
        print(txt)
        print('outcomes:', '; '.join(fmt_outcome(R, o) for o in sorted(R.outcomes, key=str)))
        return
    if a.what == 'phase1':
        run_suite(tests, dict(switch=False, **over), sys.stdout,
                  show_traces=True, want_stuck=not a.no_stuck, layouts=layouts, pad=pad,
                  summary=summary)
    elif a.what == 'phase2':
        run_suite(tests, dict(switch=True, switch_budget=a.budget, **over), sys.stdout,
                  show_traces=True, want_stuck=not a.no_stuck, layouts=layouts, pad=pad,
                  summary=summary)
    elif a.what == 'ablations':
        only = a.only.split(',') if a.only else None
        for name, p2, ov, desc in ABLATIONS:
            if only and name not in only:
                continue
            print(f'\n######## ablation {name}: {desc}', flush=True)
            base = dict(switch=p2, switch_budget=a.budget, **ov)
            run_suite(tests, base, sys.stdout, show_traces=True,
                      want_stuck=not a.no_stuck)


if __name__ == '__main__':
    try:
        main()
    except BrokenPipeError:
        pass
