#!/usr/bin/env python3
"""Task D: direct forwards with failures, exactly the rules of the session-25 text
(README "Task D: forward failures"; rules D1-D11, P1-P6).  Loaded by dsm_model.explore
when Cfg.fwd_d is set; the other models are untouched.

State = the Task C state (procs, c2p, p2c, pages, regs, sb, aux, (peer chans, notes))
plus dx = (pst, st, bud, cgone):
  pst[i] = (mark bitmask (RO copies marked `forwarded`), aborted bitmask (pages whose
            pending Fetch had its forward aborted, P4), kept (per page None | (req, bytes):
            Pages that came before their note, P3), reqs (per page: req id of the last Fetch))
  st[i]  = 'A' alive | 'X' crashed | 'D' detached (clean)
  bud    = (writebacks left, detaches left, peer failures left, crashes left)
  cgone  = bitmask of processes whose Lost/Leave C has consumed
Per page (C): home_valid (g[6]) = not stale.  busy kinds added:
  ('FD', R, req, S, phase 'W'|'A', s_in, refreshed)   a forward (D1), 'A' = aborting (D5)
  ('FL', R, S, why 'O'|'SW', args)                     a flush: Downgrade to reader S (D8/D9)
"""
import itertools
import dsm_model as D
from dsm_model import ProtoErr, bits, fmt_bytes

NOTHING = object()


class MutD(D.Mut):
    __slots__ = ('pst', 'st', 'bud', 'cg', 'bh', 'bb')

    def __init__(self, s, vec=()):
        super().__init__(s, vec)
        dx = s[8]
        self.pst = list(dx[0]); self.st = list(dx[1]); self.bud = list(dx[2]); self.cg = dx[3]
        # Task E (fwd_upgrade='backup'): bh[p] = C's backup holders of page p (bitmask);
        # bb[i][p] = None | the bytes process i keeps as a backup of p
        if len(dx) > 4:
            self.bh = list(dx[4]); self.bb = list(dx[5])
        else:
            self.bh = self.bb = None

    def flush(self, runs):
        # messages to a crashed or detached process are lost (its connection is gone)
        N = len(self.st)
        keep = []
        for toc, d, msg in self.out:
            if toc is False and self.st[d] != 'A':
                continue
            if toc is None and self.st[d % N] != 'A':
                continue
            keep.append((toc, d, msg))
        self.out = keep
        super().flush(runs)

    def freeze(self):
        ex = () if self.bh is None else (tuple(self.bh), tuple(self.bb))
        return super().freeze() + ((tuple(self.pst), tuple(self.st), tuple(self.bud), self.cg) + ex,)

    def setp(self, i, mark=None, ab=None, kept=None, req=None):
        mk, a, kp, rq = self.pst[i]
        if mark is not None: mk = mark
        if ab is not None: a = ab
        if kept is not None:
            p, v = kept; kp = kp[:p] + (v,) + kp[p + 1:]
        if req is not None:
            p, v = req; rq = rq[:p] + (v,) + rq[p + 1:]
        self.pst[i] = (mk, a, kp, rq)


class ModelD(D.Model):
    dmode = True

    def __init__(self, test, cfg):
        assert cfg.forward == 'fetch', 'Task D (fwd_d) models fetch forwards only (D1)'
        assert not cfg.runs and cfg.ahead == 'none', 'Task D: no runs, no ahead requests'
        super().__init__(test, cfg)
        self.crashers = frozenset(cfg.fwd_crash)
        self.dm = cfg.fwd_dmut
        assert self.dm in ('none', 'acceptaborted', 'nohandshake', 'noskip', 'detachdrop',
                           'flushdrop'), self.dm
        self._csc = {}
        self.bk = cfg.fwd_upgrade == 'backup'       # Task E
        self.bm = cfg.fwd_bkmut
        assert self.bm in ('none', 'earlyrelease', 'norestore', 'nowait', 'bkdetachdrop',
                           'restoreany'), self.bm
        assert cfg.fwd_backup_again in ('flush', 'roll'), cfg.fwd_backup_again
        assert self.bk or self.bm == 'none'

    # ------------------------------------------------------------------ state
    def initial(self):
        s = super().initial()
        c = self.cfg
        pst = tuple((0, 0, (None,) * self.NP, (0,) * self.NP) for _ in range(self.N))
        dx = (pst, ('A',) * self.N,
              (c.fwd_wb, c.fwd_detach, c.fwd_peerfail, 1 if c.fwd_crash else 0), 0)
        if self.bk:
            dx += ((0,) * self.NP, tuple((None,) * self.NP for _ in range(self.N)))
        return s + (dx,)

    def msgstr(self, m):
        k = m[0]
        if k in ('Lost', 'Leave'):
            return k
        pn = self.pn[m[1]]
        if k == 'Fetch':
            return f'Fetch({pn},req={m[2]})'
        if k == 'Forward':
            return f'Forward({pn},to=P{m[2]+1},req={m[3]})'
        if k in ('ForwardNote', 'ForwardAbort'):
            return f'{k}({pn},req={m[2]})'
        if k == 'Pages':
            return f'Pages({pn},req={m[2]},{fmt_bytes(m[3], self.pages[m[1]])})'
        if k in ('BackupData', 'BackupHome'):
            return f'{k}({pn},{fmt_bytes(m[2], self.pages[m[1]])})' if m[2] is not None else f'{k}({pn},None)'
        if k == 'BackupAck':
            return f'BackupAck({pn},{"kept" if m[2] else "no copy"})'
        if k in ('ForwardReturn', 'Writeback'):
            return f'{k}({pn},{fmt_bytes(m[2], self.pages[m[1]])})'
        if k in ('DowngradeAck', 'RecallAck') and m[2] is None:
            return f'{k}({pn},None)'
        return super().msgstr(m)

    # ------------------------------------------------------------------ helpers
    def pending_fetch(self, m, i, p):
        pc, blk, _ = m.procs[i]
        return blk == 'F' and self.PAGE[self.progs[i][pc][1]] == p

    def fault(self, m, i, msg, piggy):
        if msg[0] == 'Fetch':
            p = msg[1]
            r = m.pst[i][3][p] + 1
            m.setp(i, req=(p, r))
            msg = ('Fetch', p, r)
        return super().fault(m, i, msg, piggy)

    def setc(self, m, i, p, c):
        pc, blk, copies = m.procs[i]
        m.procs[i] = (pc, blk, copies[:p] + (c,) + copies[p + 1:])

    def clear_mark(self, m, i, p):
        mk = m.pst[i][0]
        if (mk >> p) & 1:
            m.setp(i, mark=mk & ~(1 << p))

    def install_fwd(self, m, i, p, data, lab):
        """P2/P3: install the forwarded page (ReadOnly, invalidate mode), mark it
        forwarded, send Got, complete the blocked read"""
        pc, blk, copies = m.procs[i]
        ins = self.progs[i][pc]
        if copies[p][0] != 'N':
            raise ProtoErr(lab + f' installs over a {copies[p][0]} copy')
        mk, ab, kp, rq = m.pst[i]
        m.pst[i] = (mk | (1 << p), ab & ~(1 << p), kp[:p] + (None,) + kp[p + 1:], rq)
        m.nt[i] &= ~(1 << p)
        self.to_c(m, i, ('Got', p))
        if ins[0] == 'R':
            v = data[self.IDX[ins[1]]]
            m.regs[self.REG[ins[2]]] = v
            m.procs[i] = (pc + 1, None, copies[:p] + (('R', data, 'I'),) + copies[p + 1:])
            return f' -> install RO (forwarded), {ins[2]}={ins[1]} -> {v}, send Got({self.pn[p]})'
        m.procs[i] = (pc, None, copies[:p] + (('R', data, 'I'),) + copies[p + 1:])
        return f' -> install RO (forwarded), unblock, send Got({self.pn[p]})'

    # ------------------------------------------------------------------ process
    def p_handle(self, m, i, msg):
        kind = msg[0]
        p = msg[1]
        pc, blk, copies = m.procs[i]
        cs, by, bel = copies[p]
        P, pn = f'P{i+1}', self.pn[p]
        lab = f'{P}: recv {self.msgstr(msg)}'
        mk, ab, kp, rq = m.pst[i]
        if kind == 'Forward':                       # P1
            to, req = msg[2], msg[3]
            if cs == 'W':
                self.setc(m, i, p, ('R', by, bel)); data = by; d = 'write-protect (RO), '
            elif cs == 'R':
                data = by; d = ''
            elif self.dm == 'noskip':
                data = (0,) * len(self.pages[p]); d = 'no copy, sends its (dropped) page anyway (mutant noskip), '
            else:
                return lab + ' -> no copy (written back): skip'
            m.setp(i, mark=mk | (1 << p))
            if m.st[to] != 'A':                     # R is gone: the send fails or vanishes
                if m.pick(('silent', 'return')) == 'silent':
                    self.to_peer(m, i, to, ('Pages', p, req, data))
                    return lab + f' -> {d}send Pages to P{to+1} (gone: lost)'
                self.to_c(m, i, ('ForwardReturn', p, data, to, req))
                return lab + f' -> {d}P{to+1} unreachable: ForwardReturn({pn}) to C'
            how = 'ok'
            if m.bud[2] > 0:
                how = m.pick(('ok', 'fail', 'ambiguous'))
            if how != 'ok':
                m.bud[2] -= 1
            if how != 'fail':
                self.to_peer(m, i, to, ('Pages', p, req, data))
            if how == 'ok':
                return lab + f' -> {d}send Pages({pn},{fmt_bytes(data, self.pages[p])}) to P{to+1}, mark forwarded'
            self.to_c(m, i, ('ForwardReturn', p, data, to, req))
            if how == 'fail':
                return lab + f' -> {d}peer send to P{to+1} FAILS: ForwardReturn({pn}) to C, keep RO'
            return (lab + f' -> {d}send Pages to P{to+1}, but the send reports an error (delivered '
                    f'anyway): ForwardReturn({pn}) to C, keep RO')
        if kind == 'ForwardNote':                   # P2
            req = msg[2]
            if not self.pending_fetch(m, i, p) or rq[p] != req:
                raise ProtoErr(lab + ' but no such Fetch is pending')
            if (m.nt[i] >> p) & 1:
                raise ProtoErr(lab + ' while a note is already held')
            if self.cfg.fwd_abort_mark == 'note' and (ab >> p) & 1:
                m.setp(i, ab=ab & ~(1 << p))
            if kp[p] is not None and kp[p][0] == req:
                return lab + ' -> kept Pages' + self.install_fwd(m, i, p, kp[p][1], lab)
            m.nt[i] |= 1 << p
            return lab + ' -> remember the note'
        if kind == 'ForwardAbort':                  # P4
            req = msg[2]
            if self.pending_fetch(m, i, p) and rq[p] == req:
                if (m.nt[i] >> p) & 1:
                    m.nt[i] &= ~(1 << p)
                    if self.cfg.fwd_abort_mark == 'none' and self.dm != 'acceptaborted':
                        m.setp(i, kept=(p, None))
                        self.to_c(m, i, ('ForwardAborted', p))
                        return lab + f' -> drop the note, send ForwardAborted({pn})'
                    m.setp(i, ab=ab | (1 << p), kept=(p, None))
                    self.to_c(m, i, ('ForwardAborted', p))
                    return lab + f' -> drop the note, remember aborted, send ForwardAborted({pn})'
                raise ProtoErr(lab + ' while pending without a note')
            return lab + ' -> already installed: ignore'
        if kind == 'Data':
            if (m.nt[i] >> p) & 1:
                raise ProtoErr(lab + ' while a ForwardNote is held')
            r = super().p_handle(m, i, msg)
            mk, ab, kp, rq = m.pst[i]
            m.pst[i] = (mk & ~(1 << p), ab & ~(1 << p), kp[:p] + (None,) + kp[p + 1:], rq)
            return r
        if kind == 'Inv':
            self.clear_mark(m, i, p)
            if cs == 'W':
                raise ProtoErr(lab + ' but copy is W (dirty data would be lost)')
            self.setc(m, i, p, ('N', None, bel))
            self.to_c(m, i, ('InvAck', p))
            return lab + f' -> Invalid, send InvAck({pn})'
        if kind == 'Downgrade':
            if cs == 'W':
                self.setc(m, i, p, ('R', by, bel))
                self.to_c(m, i, ('DowngradeAck', p, by))
                return lab + f' -> RO, send DowngradeAck({pn},{fmt_bytes(by, self.pages[p])})'
            if cs == 'R':
                if self.dm == 'flushdrop':          # today's rule: drop the copy, answer None
                    self.setc(m, i, p, ('N', None, bel)); self.clear_mark(m, i, p)
                    self.to_c(m, i, ('DowngradeAck', p, None))
                    return lab + ' -> RO copy: drop it, send DowngradeAck(None) (mutant flushdrop)'
                self.to_c(m, i, ('DowngradeAck', p, by))
                return lab + f' -> keep RO, send DowngradeAck({pn},{fmt_bytes(by, self.pages[p])}) (flush)'
            self.to_c(m, i, ('DowngradeAck', p, None))
            return lab + ' -> no copy, send DowngradeAck(None)'
        if kind == 'Recall':
            self.clear_mark(m, i, p)
            self.setc(m, i, p, ('N', None, bel))
            if cs == 'W':
                self.to_c(m, i, ('RecallAck', p, by))
                return lab + f' -> Invalid, send RecallAck({pn},{fmt_bytes(by, self.pages[p])})'
            self.to_c(m, i, ('RecallAck', p, None))
            return lab + f' -> copy {cs}: Invalid, send RecallAck(None)'
        if kind == 'InvBackup':                     # Task E: invalidate, keep the bytes aside
            self.clear_mark(m, i, p)
            if cs == 'W':
                raise ProtoErr(lab + ' but copy is W')
            old = m.bb[i][p]
            if old is not None and self.cfg.fwd_backup_again != 'roll':
                raise ProtoErr(lab + ' while an older backup is kept')
            if cs == 'R':
                self.setc(m, i, p, ('N', None, bel))
                self.setbb(m, i, p, by)
                self.to_c(m, i, ('BackupAck', p, True))
                return lab + (f' -> Invalid, keep backup {fmt_bytes(by, self.pages[p])}'
                              + (' (replaces the older one)' if old is not None else '')
                              + f', send BackupAck({pn},kept)')
            self.to_c(m, i, ('BackupAck', p, False))
            return lab + f' -> no copy (written back): send BackupAck({pn},no copy)'
        if kind == 'DropBackup':
            if m.bb[i][p] is None:
                raise ProtoErr(lab + ' but no backup is kept')
            self.setbb(m, i, p, None)
            return lab + ' -> drop the backup'
        if kind == 'RestoreBackup':
            b = m.bb[i][p]
            if b is None:
                raise ProtoErr(lab + ' but no backup is kept')
            self.setbb(m, i, p, None)
            self.to_c(m, i, ('BackupData', p, b))
            return lab + f' -> send BackupData({pn},{fmt_bytes(b, self.pages[p])}), drop the backup'
        if kind == 'Grant':
            self.clear_mark(m, i, p)
        return super().p_handle(m, i, msg)

    def setbb(self, m, i, p, v):
        row = m.bb[i]
        m.bb[i] = row[:p] + (v,) + row[p + 1:]

    def t_peer(self, m, c, j):
        """P3: Pages from a peer, always consumable (kept until the note, or dropped)"""
        src, dst = divmod(c, self.N)
        ch = m.pp[c]
        msg = ch[j]
        m.pp[c] = ch[:j] + ch[j + 1:]
        p, req, data = msg[1], msg[2], msg[3]
        lab = f'P{dst+1}: [peer P{src+1}->P{dst+1}] recv {self.msgstr(msg)}'
        mk, ab, kp, rq = m.pst[dst]
        if not self.pending_fetch(m, dst, p) or rq[p] != req:
            return lab + ' -> no such Fetch pending: drop Pages'
        if (ab >> p) & 1:
            if self.dm == 'acceptaborted':
                return lab + ' -> aborted, accepted anyway (mutant acceptaborted)' + \
                    self.install_fwd(m, dst, p, data, lab)
            return lab + ' -> aborted: drop Pages'
        if (m.nt[dst] >> p) & 1:
            return lab + self.install_fwd(m, dst, p, data, lab)
        if kp[p] is not None:
            if self.cfg.fwd_abort_mark != 'none':
                raise ProtoErr(lab + ' while Pages for it are already kept')
            m.setp(dst, kept=(p, (req, data)))
            return lab + ' -> no note yet: keep the data (replaces the Pages kept before)'
        m.setp(dst, kept=(p, (req, data)))
        return lab + ' -> no note yet: keep the data'

    # ------------------------------------------------------------------ environment
    def t_writeback(self, m, i, p):
        """P6: release of one page (a Writable copy, or a ReadOnly copy marked forwarded)"""
        cs, by, bel = m.procs[i][2][p]
        self.setc(m, i, p, ('N', None, bel))
        self.clear_mark(m, i, p)
        self.to_c(m, i, ('Writeback', p, by))
        m.bud[0] -= 1
        return f'P{i+1}: release {self.pn[p]} ({cs}): send Writeback({self.pn[p]},{fmt_bytes(by, self.pages[p])}), drop it'

    def t_detach(self, m, i):
        parts = []
        s_bb = m.bb[i] if self.bk else ()
        for p in range(self.NP):
            cs, by, bel = m.procs[i][2][p]
            if cs == 'W' or (cs == 'R' and (m.pst[i][0] >> p) & 1 and self.dm != 'detachdrop'):
                self.to_c(m, i, ('Writeback', p, by))
                parts.append(f'Writeback({self.pn[p]},{fmt_bytes(by, self.pages[p])})')
        if self.bk:
            for p in range(self.NP):
                b = m.bb[i][p]
                if b is not None and self.bm != 'bkdetachdrop':
                    self.to_c(m, i, ('BackupHome', p, b))
                    parts.append(f'BackupHome({self.pn[p]},{fmt_bytes(b, self.pages[p])})')
            m.bb[i] = (None,) * self.NP
        self.to_c(m, i, ('Leave',))
        pc, blk, copies = m.procs[i]
        m.procs[i] = (pc, blk, tuple(('N', None, c[2]) for c in copies))
        m.pst[i] = (0, 0, (None,) * self.NP, m.pst[i][3])
        m.st[i] = 'D'
        m.bud[1] -= 1
        m.c2p[i] = ()
        for j in range(self.N):
            m.pp[j * self.N + i] = ()
        return f'P{i+1}: detach: ' + ', '.join(parts + ['Leave']) + \
            (' (mutant detachdrop: RO copies dropped)' if self.dm == 'detachdrop' else '') + \
            (' (mutant bkdetachdrop: backups dropped)' if self.bm == 'bkdetachdrop' and any(
                b is not None for b in s_bb) else '')

    def t_crash(self, m, i):
        """the process stops; a suffix of what it sent to C (and on each peer channel) is
        lost; C gets Lost after whatever was delivered"""
        m.st[i] = 'X'
        m.bud[3] -= 1
        ch = m.p2c[i]
        k = m.pick(tuple(range(len(ch), -1, -1)))
        m.p2c[i] = ch[:k] + (('Lost',),)
        d = f'P{i+1}: CRASH (pc={m.procs[i][0]}): {len(ch) - k} of {len(ch)} messages to C lost'
        for j in range(self.N):
            c = i * self.N + j
            pch = m.pp[c]
            if pch:
                kk = m.pick(tuple(range(len(pch), -1, -1)))
                m.pp[c] = pch[:kk]
                d += f', {len(pch) - kk} of {len(pch)} Pages to P{j+1} lost'
        m.c2p[i] = ()
        for j in range(self.N):
            m.pp[j * self.N + i] = ()
        pc, blk, copies = m.procs[i]
        m.procs[i] = (pc, blk, tuple(('N', None, c[2]) for c in copies))
        m.pst[i] = (0, 0, (None,) * self.NP, m.pst[i][3])
        m.nt[i] = 0
        if self.bk:
            m.bb[i] = (None,) * self.NP
        return d

    # ------------------------------------------------------------------ coordinator
    def lowest_reader(self, sh, excl=-1):
        hs = [x for x in bits(sh) if x != excl]
        return hs[0] if hs else -1

    def begin_fwd(self, m, p, R, req, S):
        g = m.pg(p)
        self.to_p(m, S, ('Forward', p, R, req))
        self.to_p(m, R, ('ForwardNote', p, req))
        g[4] = ('FD', R, req, S, 'W', True, False)
        return (f'Forward({self.pn[p]},to=P{R+1},req={req}) to {"owner" if g[1] == S else "reader"} '
                f'P{S+1}, ForwardNote to P{R+1}, busy until Got')

    def begin_flush(self, m, p, R, S, why, args):
        g = m.pg(p)
        self.to_p(m, S, ('Downgrade', p))
        g[4] = ('FL', R, S, why, args)
        return f'stale: flush: Downgrade({self.pn[p]}) to reader P{S+1}, busy'

    # ---------------------------------------------------------- Task E: backups
    def to_p(self, m, i, msg, stale_ok=False):
        if (self.bk and msg[0] in ('Data', 'Grant') and msg[2] is not None and m.bh[msg[1]]
                and self.bm != 'norestore'):
            raise ProtoErr(f'C: {self.msgstr(msg)} to P{i+1} sends the home of '
                           f'{self.pn[msg[1]]}, which is BEHIND its backups')
        super().to_p(m, i, msg, stale_ok)

    def release(self, m, p):
        """E2: the home now holds bytes at least as new as every backup of p: tell the
        holders to drop them"""
        if not self.bk:
            return ''
        g = m.pg(p)
        hs = m.bh[p]
        b = g[4]
        if b is not None and b[0] == 'OB' and b[3]:     # roll: the older generation too
            hs |= b[3]
            g[4] = b[:3] + (0,)
        if not hs:
            return ''
        for h in bits(hs):
            self.to_p(m, h, ('DropBackup', p))
        m.bh[p] = 0
        return f'; home caught up: DropBackup({self.pn[p]}) to {self.rs(hs)}'

    def behind(self, m, g, p):
        """the home would be used (no owner, not stale) but is behind its backups"""
        return (self.bk and m.bh[p] and g[1] < 0 and g[6] and self.bm != 'norestore')

    def begin_restore(self, m, p, cont):
        """E3: ask a backup holder to send its backup home; cont = what to do then"""
        g = m.pg(p)
        hs = list(bits(m.bh[p]))
        H = m.pick(hs) if self.bm == 'restoreany' or len(hs) == 1 else hs[0]
        self.to_p(m, H, ('RestoreBackup', p))
        m.bh[p] &= ~(1 << H)                # H drops its backup when it sends it home
        g[4] = ('RB', H, cont)
        return (f'home behind its backups and nobody holds newer bytes: '
                f'RestoreBackup({self.pn[p]}) to P{H+1}, busy')

    def restore_done(self, m, p, data):
        g = m.pg(p)
        _, H, cont = g[4]
        m.bh[p] &= ~(1 << H)
        if data is not None:
            g[3] = data
            d = f' -> restored: home={fmt_bytes(data, self.pages[p])}'
        else:
            d = ' -> backups all lost: the (older) home is used'
        g[6] = True
        g[4] = None
        d += self.release(m, p)
        if cont is None:
            return d + ', unbusy'
        if cont[0] == 'serve':
            _, kind, A, args = cont
            if (m.cg >> A) & 1:
                return d + f'; requester P{A+1} gone: {kind} dropped, unbusy'
            return d + f'; then {kind} of P{A+1}: ' + self.serve(m, p, kind, A, args)
        g[4] = cont[1]
        return d + '; then' + self.complete(m, p)

    def settle(self, m, p):
        g = m.pg(p)
        if g[4] is None and self.behind(m, g, p):
            return '; ' + self.begin_restore(m, p, None)
        return ''

    def serve(self, m, p, kind, A, args):
        g = m.pg(p)
        if self.behind(m, g, p):
            return self.begin_restore(m, p, ('serve', kind, A, args))
        mode, owner, sh = g[0], g[1], g[2]
        pn = self.pn[p]
        if kind == 'Fetch':
            req = args[0]
            if owner == A:
                raise ProtoErr(f'C: Fetch({pn}) from its owner P{A+1}')
            if not g[6] and (sh >> A) & 1:
                raise ProtoErr(f'C: Fetch({pn}) from P{A+1}, a reader of the stale page')
            if mode == 'I' and owner >= 0:                                  # D1
                return self.begin_fwd(m, p, A, req, owner)
            if mode == 'I' and not g[6]:
                return self.begin_fwd(m, p, A, req, self.lowest_reader(sh, A))
            if owner >= 0:
                raise ProtoErr(f'C: {pn} has an owner in mode {mode}')
            self.to_p(m, A, ('Data', p, g[3], mode))
            g[2] = sh | (1 << A)
            return f'Data({pn},{fmt_bytes(g[3], self.pages[p])},mode={mode}) to P{A+1}, readers+=P{A+1}'
        if kind == 'Own' and mode == 'I' and not g[6]:                     # D8
            if owner >= 0:
                raise ProtoErr(f'C: {pn} stale with an owner')
            if (sh >> A) & 1:
                if self.cfg.fwd_upgrade == 'flush' and sh & ~(1 << A):
                    return 'upgrade of a reader: ' + self.begin_flush(
                        m, p, A, self.lowest_reader(sh, A), 'O', args)
                if self.bk and sh & ~(1 << A):
                    if m.bh[p] and self.cfg.fwd_backup_again == 'flush':
                        return 'upgrade of a reader, older backups exist: ' + self.begin_flush(
                            m, p, A, self.lowest_reader(sh, A), 'O', args)
                    return self.begin_backup(m, p, A, sh & ~(1 << A))
            elif self.cfg.fwd_stale_own == 'flush':
                return self.begin_flush(m, p, A, self.lowest_reader(sh), 'O', args)
        r = super().serve(m, p, kind, A, args)
        if kind == 'Own' and g[1] == A:
            g[6] = True                             # granted at once: an owned page is never stale
        return r

    def begin_backup(self, m, p, A, others):
        """E1: InvBackup to the other readers; grant A without data once all acked"""
        g = m.pg(p)
        for s_ in bits(others):
            self.to_p(m, s_, ('InvBackup', p))
        old = m.bh[p]                       # roll: the older generation, dropped at the end
        m.bh[p] = 0
        d = (f'upgrade of a reader: InvBackup({self.pn[p]}) to {self.rs(others)}'
             + (f' (older backups at {self.rs(old)})' if old else ''))
        if self.bm == 'nowait':
            g[1] = A; g[2] = 0; g[6] = True
            self.to_p(m, A, ('Grant', p, None, 'I'))
            m.bh[p] = old
            return d + f', Grant({self.pn[p]},no data: upgrade) to P{A+1} at once (mutant nowait)'
        g[4] = ('OB', A, others, old)
        return d + ', busy until every BackupAck'

    def t_switch(self, m, p):
        g = m.pg(p)
        if g[0] == 'I' and g[1] < 0 and not g[6]:                           # D9
            return f'C: switch({self.pn[p]}) I->U: ' + self.begin_flush(
                m, p, -1, self.lowest_reader(g[2]), 'SW', ())
        return super().t_switch(m, p)

    def complete(self, m, p):
        g = m.pg(p)
        kind, A, aw, O = g[4]
        gone = (m.cg >> A) & 1 if A >= 0 else 0
        if kind == 'OB':
            g[4] = None
            sh = g[2]
            g[2] = 0
            d = ''
            if O:                           # roll: the older generation
                if m.bh[p]:
                    drop = O & ~m.bh[p]
                    for h in bits(drop):
                        self.to_p(m, h, ('DropBackup', p))
                    d = f', older backups dropped at {self.rs(drop)}' if drop else ''
                else:
                    m.bh[p] = O
                    d = f', no new backup: the older ones at {self.rs(O)} stay'
            if gone:
                g[1] = -1; g[6] = True
                return (f' -> requester P{A+1} gone: owner=none, readers={{}}{d}'
                        + self.settle(m, p))
            if g[6]:
                d += self.release(m, p)
            gm = self.grant_msg(g, p, A, sh)
            g[1] = A; g[6] = True
            self.to_p(m, A, gm)
            if self.bm == 'earlyrelease':
                d += self.release(m, p) + ' (mutant earlyrelease)'
            return (f' -> owner=P{A+1}, {self.msgstr(gm)} to P{A+1}, backups at '
                    f'{self.rs(m.bh[p])}{d}, unbusy')
        if kind in ('O', 'S') and self.behind(m, g, p):
            return ' -> ' + self.begin_restore(m, p, ('complete', g[4]))
        if kind == 'O':
            g[4] = None
            sh = g[2]
            g[2] = 0
            if gone:
                g[1] = -1; g[6] = True
                return (f' -> requester P{A+1} gone: owner=none, readers={{}}, no reply, unbusy'
                        + self.settle(m, p))
            gm = self.grant_msg(g, p, A, sh)
            g[1] = A; g[6] = True                   # an owned page is never stale
            self.to_p(m, A, gm)
            return f' -> owner=P{A+1}, {self.msgstr(gm)} to P{A+1}, unbusy'
        if kind == 'S':
            g[4] = None
            g[1] = -1; g[0] = 'U'
            return f' -> switch done: mode=U, owner=none, readers={self.rs(g[2])}, unbusy'
        raise ProtoErr('bad busy ' + repr(g[4]))

    def rs(self, sh):
        return '{' + ','.join(f'P{x+1}' for x in bits(sh)) + '}'

    def fd_settle(self, g, fd):
        _, R, req, S, ph, s_in, refr = fd
        if g[1] == S:
            g[1] = -1
        if s_in:
            g[2] |= 1 << S

    def fd_abort(self, m, p, fd):
        """D5: ForwardAbort to R (once), keep awaiting its Got or ForwardAborted"""
        g = m.pg(p)
        _, R, req, S, ph, s_in, refr = fd
        if ph != 'W':
            return ''
        g[4] = fd[:4] + ('A',) + fd[5:]
        self.to_p(m, R, ('ForwardAbort', p, req))
        return f'; ABORT: ForwardAbort({self.pn[p]},req={req}) to P{R+1}'

    def fd_complete(self, m, p, got):
        g = m.pg(p)
        fd = g[4]
        _, R, req, S, ph, s_in, refr = fd
        self.fd_settle(g, fd)
        if got:
            g[2] |= 1 << R
        g[6] = refr or not g[2]
        g[4] = None
        return (f' -> forward complete: owner=none, readers={self.rs(g[2])}, '
                f'{"home current" if g[6] else "home stale"}, unbusy')

    def c_handle(self, m, i, msg):
        kind = msg[0]
        if kind in ('Lost', 'Leave'):
            return self.c_leave(m, i, kind)
        p = msg[1]
        g = m.pg(p)
        lab = f'C: recv {self.msgstr(msg)} from P{i+1}'
        busy = g[4]
        bit = 1 << i
        fd = busy if busy is not None and busy[0] == 'FD' else None
        if kind == 'Got':                                                   # D2
            if fd is None or fd[1] != i:
                return lab + ' -> nobody awaits it: ignored'
            return lab + self.fd_complete(m, p, True)
        if kind == 'ForwardAborted':                                        # D5
            if fd is None or fd[1] != i or fd[4] != 'A':
                raise ProtoErr(lab + ' not awaited')
            self.fd_settle(g, fd)
            if fd[6]:
                g[6] = True
            if not g[2] and g[1] < 0:
                g[6] = True
            g[4] = None
            return lab + ' -> restart the Fetch: ' + self.serve(m, p, 'Fetch', i, (fd[2],))
        if kind == 'ForwardReturn':                                         # D4b
            data = msg[2]
            if fd is not None and fd[3] == i and fd[4] == 'W' and (
                    not self.cfg.fwd_return_id or (fd[1], fd[2]) == (msg[3], msg[4])):
                g[3] = data; g[6] = True
                if g[1] == i:
                    g[1] = -1
                g[4] = fd[:6] + (True,)
                return (lab + ' -> D4b: home=data (current), source keeps RO' + self.release(m, p)
                        + self.fd_abort(m, p, g[4]))
            if not g[6] and (g[2] >> i) & 1 and self.cfg.fwd_late_return == 'accept':
                g[3] = data; g[6] = True
                return (lab + ' -> late return from a reader of the stale page: home=data, current'
                        + self.release(m, p))
            return lab + ' -> ignored'
        if kind == 'Writeback':                                             # D3, D10
            data = msg[2]
            if g[1] == i:
                g[3] = data; g[1] = -1; g[6] = True; d = ' -> from the owner: home=data, owner=none'
                d += self.release(m, p)
            elif not g[6] and (g[2] >> i) & 1:
                g[3] = data; g[6] = True; g[2] &= ~bit
                d = ' -> D10: from a reader of the stale page: home=data, current, reader removed'
                d += self.release(m, p)
            elif (fd is not None and fd[3] == i and fd[4] == 'W'
                  and self.cfg.fwd_d3 == 'always'):
                # the fix: the source's Writeback aborts its forward even when another
                # reader's Writeback already made the home current (its data equals the home)
                g[2] &= ~bit; d = ' -> from the source of the forward (page no longer stale)'
            else:
                return lab + ' -> ignored'
            if fd is not None:
                fd = fd[:6] + (True,)
                if fd[3] == i:
                    fd = fd[:5] + (False, True)
                    g[4] = fd
                    d += '; D3: the source wrote back' + self.fd_abort(m, p, fd)
                else:
                    g[4] = fd
            return lab + d
        if kind in ('Fetch', 'Own', 'Write', 'RMW', 'COwn'):
            return super().c_handle(m, i, msg)
        if kind == 'BackupAck':                                             # E1
            if self.bm == 'nowait' and (busy is None or busy[0] != 'OB'):
                if msg[2]:
                    m.bh[p] |= bit
                return lab + ' -> (granted already, mutant nowait) backup holder recorded'
            if busy is None or busy[0] != 'OB' or not (busy[2] & bit):
                raise ProtoErr(lab + ' not awaited')
            d = ''
            if msg[2]:
                if g[6]:                    # the home caught up meanwhile (D10)
                    self.to_p(m, i, ('DropBackup', p))
                    d = f' -> home is current: DropBackup({self.pn[p]}) to P{i+1}'
                else:
                    m.bh[p] |= bit
                    d = f' -> backup holder P{i+1}'
            aw = busy[2] & ~bit
            g[4] = (busy[0], busy[1], aw, g[4][3])
            if aw == 0:
                d += self.complete(m, p)
            return lab + d
        if kind == 'BackupData':                                            # E3
            if busy is None or busy[0] != 'RB' or busy[1] != i:
                raise ProtoErr(lab + ' not awaited')
            return lab + self.restore_done(m, p, msg[2])
        if kind == 'BackupHome':                                            # E4
            if busy is not None and busy[0] == 'RB' and busy[1] == i:
                return lab + ' -> the restore target sent it home' + self.restore_done(m, p, msg[2])
            if m.bh[p] & bit:
                g[3] = msg[2]
                m.bh[p] &= ~bit
                return (lab + f' -> home={fmt_bytes(msg[2], self.pages[p])} (the backups\' '
                        f'version; {"owner or readers keep newer bytes" if not (g[1] < 0 and g[6]) else "current"})'
                        + self.release(m, p))
            return lab + ' -> not a backup holder (released meanwhile): ignored'
        # acks
        if kind == 'DowngradeAck' and busy is not None and busy[0] == 'FL' and busy[2] == i:
            return lab + self.flush_done(m, p, msg[2])
        if kind in ('DowngradeAck', 'RecallAck', 'InvAck', 'InvDataAck'):
            if busy is None or busy[0] not in ('O', 'S') or not (busy[2] & bit):
                raise ProtoErr(lab + ' not awaited')
            if kind == 'DowngradeAck' and busy[0] != 'S' or kind in ('RecallAck', 'InvAck', 'InvDataAck') and busy[0] != 'O':
                raise ProtoErr(lab + ' unexpected')
            d = ''
            if kind in ('DowngradeAck', 'RecallAck', 'InvDataAck'):
                if g[1] == i:
                    g[1] = -1
                if msg[2] is not None:
                    g[3] = msg[2]; g[6] = True
                    d = f' -> home={fmt_bytes(msg[2], self.pages[p])}' + self.release(m, p)
                    if kind == 'DowngradeAck':
                        g[2] |= bit; d += ', stays a reader'
                else:
                    d = ' -> no data (written back before): home is current'
            aw = busy[2] & ~bit
            g[4] = (busy[0], busy[1], aw, busy[3])
            if aw == 0:
                d += self.complete(m, p)
            return lab + d
        raise ProtoErr(lab + ': unknown')

    def flush_done(self, m, p, data):
        g = m.pg(p)
        _, R, S, why, args = g[4]
        if data is not None:
            g[3] = data; d = f' -> flush: home={fmt_bytes(data, self.pages[p])}, current'
            d += self.release(m, p)
        else:
            d = ' -> flush: no copy (its Writeback came first): home is current'
        g[6] = True
        g[4] = None
        if self.behind(m, g, p) and why == 'O' and not (m.cg >> R) & 1:
            return d + '; ' + self.begin_restore(m, p, ('serve', 'Own', R, args))
        if why == 'SW':
            g[0] = 'U'
            return d + ', switch done: mode=U, readers kept, unbusy'
        if (m.cg >> R) & 1:
            return d + f'; requester P{R+1} gone: Own dropped, unbusy' + self.settle(m, p)
        return d + '; then the ordinary Own: ' + super().serve(m, p, 'Own', R, args)

    def c_leave(self, m, i, kind):
        """D4, D6, D7 and the existing leave rules"""
        m.cg |= 1 << i
        bit = 1 << i
        acts = []
        for p in range(self.NP):
            g = m.pg(p)
            pn = self.pn[p]
            if g[1] == i:
                g[1] = -1; g[6] = True
                acts.append(f'{pn}: owner P{i+1} removed (its unwritten writes are lost)')
            if g[2] & bit:
                g[2] &= ~bit
            if any(q[1] == i for q in g[5]):
                g[5] = tuple(q for q in g[5] if q[1] != i)
            if self.bk:
                if m.bh[p] & bit:
                    m.bh[p] &= ~bit
                    acts.append(f'{pn}: backup holder P{i+1} dropped out')
                b = g[4]
                if b is not None and b[0] == 'OB' and b[3] & bit:
                    g[4] = b[:3] + (b[3] & ~bit,)
            b = g[4]
            if b is not None and b[0] == 'RB':
                if b[1] == i:
                    if m.bh[p]:
                        acts.append(f'{pn}: restore target lost: ' + self.begin_restore(m, p, b[2]))
                    else:
                        acts.append(f'{pn}: restore target lost' + self.restore_done(m, p, None))
            elif b is not None:
                if b[0] == 'FD':
                    _, R, req, S, ph, s_in, refr = b
                    if R == i:                                                  # D6
                        acts.append(f'{pn}: D6 requester lost' + self.fd_complete(m, p, False))
                    elif S == i:                                                # D4
                        if self.dm == 'nohandshake' and ph == 'W':
                            g[4] = None
                            self.fd_settle(g, b[:5] + (False, refr))
                            if not g[2]:
                                g[6] = True
                            self.to_p(m, R, ('Data', p, g[3], g[0]), stale_ok=True)
                            g[2] |= 1 << R
                            acts.append(f'{pn}: D4 source lost -> Data(home) to P{R+1} at once (mutant nohandshake)')
                        else:
                            nb = b[:5] + (False, refr)
                            g[4] = nb
                            acts.append(f'{pn}: D4 source lost' + self.fd_abort(m, p, nb))
                elif b[0] == 'FL':
                    _, R, S, why, args = b
                    if S == i:
                        if not g[6] and g[2] and self.cfg.fwd_flush_lost == 'reflush':
                            S2 = self.lowest_reader(g[2])
                            self.to_p(m, S2, ('Downgrade', p))
                            g[4] = ('FL', R, S2, why, args)
                            acts.append(f'{pn}: flush target lost, page still stale: Downgrade to P{S2+1}')
                        else:
                            acts.append(f'{pn}: flush target lost' + self.flush_done(m, p, None))
                    elif R == i:
                        acts.append(f'{pn}: flush requester lost (Own dropped when the flush is done)')
                else:
                    kd, A, aw, O = b
                    if aw & bit or A == i:
                        g[4] = (kd, A, aw & ~bit, O)
                        acts.append(f'{pn}: acks from P{i+1} count as received')
                        if not aw & ~bit:
                            acts.append(pn + ':' + self.complete(m, p))
            if g[4] is None or g[4][0] not in ('FD',):
                if g[1] < 0 and not g[6] and not g[2]:                          # D7
                    g[6] = True
                    acts.append(f'{pn}: stale and no reader left: the (older) home is current')
            if self.bk:
                r = self.settle(m, p)
                if r:
                    acts.append(pn + ': ' + r[2:])
        return f'C: recv {kind} of P{i+1} -> removed everywhere' + ('; ' + '; '.join(acts) if acts else '')

    # ------------------------------------------------------------------ successors
    def successors(self, s):
        res = super().successors(s)
        pp = s[7]
        dx = s[8]
        st, bud = dx[1], dx[2]
        extra = []

        def run(fn, *a):
            vec = (); stack = None
            while True:
                m = MutD(s, vec)
                try:
                    lab = fn(m, *a)
                except ProtoErr as e:
                    lab = None
                    extra.append((str(e), None, str(e), 'env' if fn in envs else False))
                if m.picks:
                    if stack is None:
                        stack = []
                    for j in range(len(vec), len(m.picks)):
                        pre = tuple(c for c, _ in m.picks[:j])
                        for c in range(m.picks[j][1] - 1, 0, -1):
                            stack.append(pre + (c,))
                if lab is not None:
                    m.flush(False)
                    extra.append((lab, m.freeze(), None, 'env' if fn in envs else False))
                if not stack:
                    return
                vec = stack.pop()
        envs = (self.t_writeback, self.t_detach, self.t_crash)
        for c, ch in enumerate(pp[0]):
            if ch:
                run(self.t_peer, c, 0)
        for i in range(self.N):
            if st[i] != 'A':
                continue
            pc, blk, copies = s[0][i]
            cur = self.PAGE[self.progs[i][pc][1]] if pc < len(self.progs[i]) else -1
            if bud[0] > 0:
                mk = dx[0][i][0]
                for p in range(self.NP):
                    cs = copies[p][0]
                    if (cs == 'W' or (cs == 'R' and (mk >> p) & 1)) and not (blk is not None and p == cur):
                        run(self.t_writeback, i, p)
            if bud[1] > 0 and cur < 0:
                run(self.t_detach, i)
            if bud[3] > 0 and i in self.crashers:
                run(self.t_crash, i)
        return res + extra

    def mk(self, s, vec=()):
        return MutD(s, vec)

    # ------------------------------------------------------------------ predicates
    def all_done(self, s):
        st = s[8][1]
        return all(st[i] != 'A' or (pr[1] is None and pr[0] == len(self.progs[i]))
                   for i, pr in enumerate(s[0]))

    def quiescent(self, s):
        return super().quiescent(s)

    def final_mem(self, s):
        st = s[8][1]
        out = []
        for l in self.locs:
            p, k = self.PAGE[l], self.IDX[l]
            g = s[3][p]
            if g[1] >= 0:
                out.append(s[0][g[1]][2][p][1][k])
            elif g[6]:
                out.append(g[3][k])
            else:
                hs = [pr[2][p][1] for i, pr in enumerate(s[0]) if pr[2][p][0] == 'R' and st[i] == 'A']
                out.append(hs[0][k] if hs else g[3][k])
        return tuple(out)

    def coherence_problem(self, s):
        st = s[8][1]
        r = super().coherence_problem(s)
        if r:
            return r
        for i, ps in enumerate(s[8][0]):
            if st[i] == 'A' and (ps[1] or any(x is not None for x in ps[2])):
                return f'P{i+1} still has aborted marks or kept Pages at quiescence'
        for p in range(self.NP):
            g = s[3][p]
            for i in bits(g[2]):
                if st[i] != 'A':
                    return f'{self.pn[p]}: departed P{i+1} still a reader'
            if g[1] >= 0 and st[g[1]] != 'A':
                return f'{self.pn[p]}: departed P{g[1]+1} still the owner'
        if self.bk:
            bh, bb = s[8][4], s[8][5]
            for p in range(self.NP):
                g = s[3][p]
                kept = [i for i in range(self.N) if st[i] == 'A' and bb[i][p] is not None]
                if set(kept) != set(bits(bh[p])):
                    return (f'{self.pn[p]}: backups kept at {["P%d" % (x+1) for x in kept]} but C '
                            f'records {self.rs(bh[p])}')
                if bh[p] and g[1] < 0 and g[6]:
                    return f'{self.pn[p]}: backups not released (home current, no owner)'
                if len({bb[i][p] for i in kept}) > 1:
                    return f'{self.pn[p]}: backups differ'
        return None

    def swmr_problem(self, s):
        r = super().swmr_problem(s)
        if r:
            return r
        for p in range(self.NP):
            g = s[3][p]
            if not g[6] and g[1] >= 0:
                return f'{self.pn[p]}: stale with an owner'
            if not g[6] and g[4] is None and not g[2]:
                return f'{self.pn[p]}: stale with no reader'
            if not g[6] and g[0] == 'U':
                return f'{self.pn[p]}: stale in update mode'
            if self.bk and self.bm != 'norestore':
                bh = s[8][4][p]
                if bh and g[4] is None and g[1] < 0 and g[6]:
                    return f'{self.pn[p]}: home behind its backups {self.rs(bh)}, no owner, not busy'
                if bh and g[0] == 'U':
                    return f'{self.pn[p]}: backups in update mode'
        return None

    # ------------------------------------------------------------------ SC with a crash
    def sc_key(self, s):
        """registers key: all registers (no crash), or the survivors' registers (the
        crashed process's masked to None) + (crashed process, its pc, blocked?)"""
        st = s[8][1]
        if 'X' not in st:
            return s[4]
        c = st.index('X')
        regs = list(s[4])
        own = {ins[2] for ins in self.progs[c] if ins[0] in 'RA'}
        for r in own:
            regs[self.REG[r]] = None
        pc, blk, _ = s[0][c]
        return tuple(regs) + ((c, pc, blk is not None),)

    def allowed(self, key):
        """the (regs, mem) outcomes allowed for a crash run: an SC interleaving of the
        survivors' programs and a prefix of the crashed process c (pc instructions, or
        pc+1 if it was blocked: the blocked one may have taken effect), where at the crash
        point a location may revert to its value before a suffix of writes by c that no
        survivor read and no survivor overwrote (an owner's unwritten writes are lost)"""
        c, pc, blocked = key[-1]
        ck = (c, pc, blocked)
        r = self._csc.get(ck)
        if r is not None:
            return r
        progs = self.progs
        locs = self.locs
        LI = {l: j for j, l in enumerate(locs)}
        RI = self.REG
        lens = {pc, pc + 1} if blocked else {pc}
        out = set()
        seen = set()
        nl = len(locs)
        init = (tuple(0 for _ in progs), tuple(0 for _ in locs), tuple(None for _ in self.reglist),
                ((),) * nl, False)
        stack = [init]
        own = {RI[ins[2]] for ins in progs[c] if ins[0] in 'RA'}
        top = max(lens)
        while stack:
            st_ = stack.pop()
            if st_ in seen:
                continue
            seen.add(st_)
            pcs, mem, rv, base, crashed = st_
            if not crashed and pcs[c] in lens:      # the crash: each location may revert
                opts = [(mem[j],) + base[j] for j in range(nl)]
                for m2 in itertools.product(*opts):
                    stack.append((pcs, tuple(m2), rv, ((),) * nl, True))
            if crashed and all(pcs[i] >= len(p) for i, p in enumerate(progs) if i != c):
                regs = tuple(None if k in own else v for k, v in enumerate(rv))
                out.add((regs + (ck,), mem))
            for i, p in enumerate(progs):
                if pcs[i] >= len(p) or (i == c and (crashed or pcs[c] >= top)):
                    continue
                op, loc, a = p[pcs[i]]
                j = LI[loc]
                mem2, rv2, b2 = list(mem), list(rv), list(base)
                if i == c:
                    if op in 'WA':                  # a write of c: the value before it may
                        b2[j] = b2[j] + (mem[j],)   # come back if no survivor reads it
                else:
                    b2[j] = ()                      # a survivor read or overwrote it
                if op == 'R':
                    rv2[RI[a]] = mem[j]
                elif op == 'W':
                    mem2[j] = a
                else:
                    rv2[RI[a]] = mem[j]; mem2[j] = mem[j] + 1
                pcs2 = list(pcs); pcs2[i] += 1
                stack.append((tuple(pcs2), tuple(mem2), tuple(rv2), tuple(b2), crashed))
        self._csc[ck] = out
        return out


def allowed_regs(M, key):
    return {oc[0] for oc in M.allowed(key)}
