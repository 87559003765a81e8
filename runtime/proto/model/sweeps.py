#!/usr/bin/env python3
"""Named sweeps for page runs / read-ahead / write-ahead (Task A, names A-*), the
adaptive update-mode rule own_in_u='data' (Task B, names B-*) and direct owner->requester
forwards (Task C, names F-*).  See README.md.

usage: python3 sweeps.py list
       python3 sweeps.py NAME [NAME ...] [--traces] [--quiet] [--tests T1,T2]
       python3 sweeps.py A-all | B-all | F-all   (every sweep of that task, one after another)

Each sweep prints one line per configuration, then
  SWEEP <name>: states=<sum> configs=<n> violating=<n> cycles=<n> maxatt=<n>
                sc_missing=<configs where some SC outcome was never produced> <time>s
                expected=<pass|fail> -> OK | UNEXPECTED
A sweep "passes" when no configuration shows a non-SC outcome, a protocol assertion,
a deadlock, a stuck state, an incoherent quiescent state, an SWMR violation or a
retry/answer cycle (and, with count_attempts, the attempts counter never saturates).
Task C sweeps add to the SWEEP line caught=<check:configs,...> (which checks failed) and
fwd[...] (how many transitions of each forward kind the search took, summed).
"""
import sys, time
import dsm_model as D

ALL = D.MAIN_TESTS + D.EXTRA_TESTS
NO_IRIW = [t for t in ALL if t != 'IRIW']
TWO = ['SB', 'MP', 'LB', '2+2W', 'CoRR', 'RMW', 'SB+pre', 'MP+pre']   # two-process tests
CORE = ['SB', 'MP', 'IRIW', '2+2W', 'CoRR', 'RMW']   # the litmus tests the brief names
AB = dict(ahead='both', runs=True)                   # read-ahead + write-ahead, page runs
# Task C
FW = dict(forward='both')                            # fetch and own forwards, with FwdNote
BR = dict(own_in_u='data', escalate='retry')         # rule 3' + escalate retry (the B-* rule)
TWO_F = TWO + ['FW-up']                              # two-process tests (+ stale-home upgrade)
THREE_F = ['WRC', 'RMW+W', 'FW-inv', 'IRIW']         # three/four-process tests
AHEAD2 = dict(ahead='all', ahead_budget=2, ahead_total=2)   # read/write/own-ahead, 2 in total
# Task D (dsm_faults.py): the session-25 rules; FD_ASIS exactly as written, FD with the two
# corrections (no aborted mark: fwd_abort_mark='none'; flush before upgrading a reader of a
# stale page: fwd_upgrade='flush')
FD_ASIS = dict(fwd_d=True, forward='fetch')
FD = dict(FD_ASIS, fwd_abort_mark='none', fwd_upgrade='flush', fwd_d3='always',
          fwd_late_return='ignore', fwd_return_id=True)
TWO_D = ['SB', 'MP', 'CoRR', 'MP+pre', 'FW-up', 'FD-ww']
THREE_D = ['WRC', 'FW-inv']
CR = dict(fwd_crash=(0, 1, 2))                       # any process may crash (one crash per run)
# Task E (backup copies): FD with the upgrade of a reader of a stale page done by InvBackup
# instead of the flush
FB = dict(FD, fwd_upgrade='backup')
TWO_E = TWO_D + ['FB-www']
THREE_E = THREE_D + ['FB-rr']

# name: (phase, tests, cfg overrides, layouts, pad, expected, description)
SWEEPS = {
    # ---------------------------------------------------------------- Task A
    'A-p1': (1, TWO, dict(AB), ('sep',), 'auto', 'pass',
             'phase 1, runs, read+write-ahead, budget 1 per process'),
    'A-p1-perpage': (1, TWO, dict(ahead='both'), ('sep',), 'auto', 'pass',
                     'phase 1, per-page messages (no runs), read+write-ahead, budget 1'),
    'A-p1-read': (1, TWO, dict(ahead='read', runs=True), ('sep',), 'auto', 'pass',
                  'phase 1, runs, read-ahead only, budget 1'),
    'A-p1-write': (1, TWO, dict(ahead='write', runs=True), ('sep',), 'auto', 'pass',
                   'phase 1, runs, write-ahead only, budget 1'),
    'A-p1-b2': (1, ['SB', 'MP', 'LB', '2+2W', 'CoRR', 'RMW'],
                dict(AB, ahead_budget=2, ahead_total=2), ('sep',), 'auto', 'pass',
                'phase 1, runs, budget 2 per process, 2 in total (runs of 2 ahead pages)'),
    'A-p1-own': (1, TWO, dict(ahead='all', runs=True, ahead_budget=2, ahead_total=2), ('sep',),
                 'auto', 'pass', 'phase 1, runs, read+write+own-ahead (unconditional Own runs: '
                 'Inv/Recall/ack/Grant runs), budget 2 per process, 2 in total'),
    'A-p2-own': (2, ['SB', 'MP', 'LB', 'CoRR', 'RMW', 'SB+pre'], dict(ahead='own', runs=True,
                 ahead_budget=2, ahead_total=2), ('sep',), 'auto', 'pass',
                 'phase 2, runs, own-ahead only, budget 2 per process, 2 in total'),
    'A-p2-own-data': (2, ['SB', 'MP', 'CoRR', 'RMW'], dict(ahead='all', runs=True, own_in_u='data',
                      escalate='retry'), ('sep',), 'auto', 'pass',
                      'phase 2, runs, read+write+own-ahead budget 1, with Task B rule (own_in_u=data)'),
    'A-p1-wrc': (1, ['WRC'], dict(AB, ahead_total=2), ('sep',), 'no', 'pass',
                 'WRC phase 1, runs, read+write-ahead, two ahead requests in total'),
    'A-p1-rmww': (1, ['RMW+W'], dict(AB, ahead_total=1), ('sep',), 'auto', 'pass',
                  'RMW+W phase 1, runs, read+write-ahead, one ahead request in total'),
    'A-p1-iriw': (1, ['IRIW'], dict(AB, ahead_total=1), ('sep',), 'no', 'pass',
                  'IRIW phase 1, runs, one ahead request in total (any process)'),
    'A-p1-iriw-readers': (1, ['IRIW'], dict(AB, ahead_procs=(2, 3)), ('sep',), 'no', 'pass',
                          'IRIW phase 1, runs, both readers budget 1 each'),
    'A-p2-a': (2, ['SB', 'MP', 'LB', 'CoRR', 'RMW'], dict(AB), ('sep',), 'auto', 'pass',
               'phase 2 (switches), runs, read+write-ahead, budget 1 per process'),
    'A-p2-b': (2, ['2+2W'], dict(AB), ('sep',), 'no', 'pass',
               'phase 2 (switches), runs, read+write-ahead, budget 1 per process'),
    'A-p2-perpage': (2, ['SB', 'MP', '2+2W', 'CoRR', 'RMW'], dict(ahead='both', ahead_total=1),
                     ('sep',), 'auto', 'pass',
                     'phase 2, per-page messages, read+write-ahead, one ahead request in total'),
    'A-p2-extra': (2, ['WRC', 'SB+pre', 'MP+pre', 'RMW+W'], dict(AB, ahead_total=1),
                   ('sep',), 'auto', 'pass',
                   'phase 2, runs, read+write-ahead, one ahead request in total'),
    'A-p2-iriw-r': (2, ['IRIW'], dict(ahead='read', runs=True, ahead_procs=(2, 3), ahead_total=1),
                    ('sep',), 'no', 'pass',
                    'IRIW phase 2 (initial modes II), runs, one read-ahead by a reader'),
    'A-p2-iriw-w': (2, ['IRIW'], dict(ahead='write', runs=True, ahead_procs=(0, 1), ahead_total=1),
                    ('sep',), 'no', 'pass',
                    'IRIW phase 2 (initial modes II), runs, one write-ahead by a writer'),
    'A-mutant-nosharers': (1, ['SB', 'MP', 'CoRR'], dict(AB, cown_ok='nosharers'), ('sep',),
                           'auto', 'fail',
                           'checker self-test: conditional Own granted although readers exist'),
    'A-mutant-noowner': (1, ['SB', 'MP', '2+2W'], dict(AB, cown_ok='noowner'), ('sep',),
                         'no', 'fail',
                         'checker self-test: conditional Own granted although there is an owner'),
    'A-ignorebusy': (2, ['SB', 'MP', 'RMW'], dict(AB, cown_ok='ignorebusy'), ('sep',), 'auto',
                     'pass', 'variant: conditional Own granted without the busy/queue test'),
    'A-anymode': (2, ['SB', 'RMW'], dict(AB, cown_ok='anymode'), ('sep',), 'auto', 'pass',
                  'variant: conditional Own also granted in mode U (is the mode-I test needed?)'),
    # ---------------------------------------------------------------- Task B
    'B-nofix': (2, ['RMW', 'CoRR', 'SB', 'MP'], dict(own_in_u='data'), ('sep', 'shared'), 'no',
                'fail', 'own_in_u=data exactly as proposed: expect a retry/answer cycle'),
    'B-p1': (1, ALL, dict(own_in_u='data', escalate='retry'), ('sep', 'shared'), 'no',
             'pass', 'phase 1, own_in_u=data + escalate after Retry, no forced stores'),
    'B-p1-forced': (1, ALL, dict(own_in_u='data', escalate='retry', forced=(0,)),
                    ('sep', 'shared'), 'no', 'pass',
                    'phase 1, own_in_u=data + escalate, P1 stores forced'),
    'B-p2': (2, ALL, dict(own_in_u='data', escalate='retry'), ('sep', 'shared'), 'no', 'pass',
             'phase 2, own_in_u=data + escalate after Retry, no forced stores'),
    'B-p2-forced': (2, ALL, dict(own_in_u='data', escalate='retry', forced=(0,)),
                    ('sep', 'shared'), 'no', 'pass',
                    'phase 2, own_in_u=data + escalate, P1 stores forced (P2.. replayable)'),
    'B-p2-forced-all': (2, NO_IRIW, dict(own_in_u='data', escalate='retry',
                                         forced=(0, 1, 2)), ('sep', 'shared'), 'no', 'pass',
                        'phase 2, own_in_u=data + escalate, every store forced'),
    'B-attempts': (2, NO_IRIW, dict(own_in_u='data', escalate='retry', count_attempts=True),
                   ('sep', 'shared'), 'no', 'pass',
                   'phase 2, own_in_u=data + escalate, requests per instruction counted'),
    'B-attempts-forced': (2, NO_IRIW, dict(own_in_u='data', escalate='retry', forced=(0,),
                                           count_attempts=True), ('sep', 'shared'), 'no', 'pass',
                          'phase 2, as B-attempts with P1 stores forced'),
    'B-attempts-today': (2, NO_IRIW, dict(count_attempts=True), ('sep', 'shared'), 'no', 'pass',
                         'baseline: today\'s rule 3 (own_in_u=switch), requests per instruction counted'),
    'B-attempts-owndata': (2, NO_IRIW, dict(own_in_u='data', escalate='owndata', count_attempts=True),
                           ('sep', 'shared'), 'no', 'pass',
                           'alternative fix (escalate after OwnData), requests per instruction counted'),
    'B-esc-owndata': (2, NO_IRIW, dict(own_in_u='data', escalate='owndata'),
                      ('sep', 'shared'), 'no', 'pass',
                      'phase 2, alternative fix: escalate after OwnData'),
    'B-with-ahead': (2, ['SB', 'MP', 'CoRR', 'RMW'],
                     dict(AB, own_in_u='data', escalate='retry'), ('sep',), 'auto', 'pass',
                     'phase 2, own_in_u=data + escalate, with runs and read+write-ahead'),
    # ---------------------------------------------------------------- Task C
    'F-p1': (1, TWO_F, dict(FW), ('sep',), 'no', 'pass',
             'phase 1, forward both (FwdShare + FwdGive, with FwdNote), per-page messages'),
    'F-p1-shared': (1, TWO_F, dict(FW), ('shared',), 'no', 'pass',
                    'phase 1, forward both, all locations on one page (false sharing)'),
    'F-p1-fetch': (1, TWO_F + THREE_F, dict(forward='fetch'), ('sep', 'shared'), 'no', 'pass',
                   'phase 1, fetch forwards only'),
    'F-p1-own': (1, TWO_F + THREE_F, dict(forward='own'), ('sep', 'shared'), 'no', 'pass',
                 'phase 1, own forwards only'),
    'F-3p': (1, THREE_F, dict(FW), ('sep', 'shared'), 'no', 'pass',
             'phase 1, forward both, 3-4 processes (stale home served by a holder, InvData)'),
    'F-3p-min': (1, THREE_F, dict(FW, fwd_holder='min'), ('sep', 'shared'), 'no', 'pass',
                 'as F-3p, C always picks the lowest-numbered holder (no branching)'),
    'F-p2': (2, TWO_F, dict(FW, **BR), ('sep', 'shared'), 'no', 'pass',
             'phase 2 (switches, Flush), rule 3\' + escalate retry, forward both'),
    'F-p2-3p': (2, THREE_F, dict(FW, **BR), ('sep', 'shared'), 'no', 'pass',
                'phase 2, rule 3\' + escalate retry, forward both, 3-4 processes'),
    'F-p2-today': (2, TWO_F + ['WRC', 'RMW+W', 'FW-inv'], dict(FW), ('sep', 'shared'), 'no',
                   'pass', 'phase 2 with today\'s rule 3 (Own in U switches U->I), forward both'),
    'F-attempts': (2, NO_IRIW + ['FW-up', 'FW-inv'], dict(FW, **BR, count_attempts=True),
                   ('sep', 'shared'), 'no', 'pass',
                   'phase 2, rule 3\' + escalate retry, forward both, requests per instruction '
                   'counted (compare B-attempts: 8)'),
    'F-runs': (1, TWO_F, dict(FW, runs=True, **AHEAD2), ('sep',), 'auto', 'pass',
               'phase 1, runs, read+write+own-ahead (budget 2, 2 in total), forward both'),
    'F-perpage-ahead': (1, TWO_F, dict(FW, **AHEAD2), ('sep',), 'auto', 'pass',
                        'as F-runs without runs (per-page messages)'),
    'F-runs-3p': (1, ['WRC', 'FW-inv'], dict(FW, runs=True, **AHEAD2), ('sep',), 'no', 'pass',
                  'phase 1, runs, read+write+own-ahead (2 in total), forward both, 3 processes'),
    'F-runs-p2': (2, ['SB', 'MP', 'CoRR', 'RMW', 'FW-up'], dict(FW, **AB, **BR), ('sep',), 'auto',
                  'pass', 'phase 2, runs, read+write-ahead (budget 1 per process), rule 3\' + '
                  'escalate retry, forward both'),
    'F-mix-p2': (2, TWO_F + ['FW-inv', 'WRC'], dict(FW, **BR, fwd_mix=True), ('sep', 'shared'), 'no',
                 'pass', 'phase 2, rule 3\' + escalate retry, C chooses per transaction whether to '
                 'forward or to go through home'),
    'F-nofix': (1, TWO_F, dict(FW, fwd_note=False), ('sep',), 'no', 'fail',
                'forwards exactly as first proposed (no FwdNote): expect non-SC (MP+pre)'),
    'F-nofix-own': (1, ['SB', 'SB+pre'], dict(forward='own', fwd_note=False, ahead='both'),
                    ('sep',), 'no', 'fail',
                    'own forwards only, no FwdNote, with read+write-ahead: expect non-SC (SB)'),
    'F-mut-early': (1, ['FW-up', 'WRC', 'FW-inv', 'RMW+W'], dict(FW, fwd_mutant='early'), ('sep',),
                    'no', 'fail', 'checker self-test: C completes the forward when sending it'),
    'F-mut-keepw': (1, TWO_F, dict(FW, fwd_mutant='keepw'), ('sep',), 'no', 'fail',
                    'checker self-test: the owner keeps W after FwdShare'),
    'F-mut-stalehome': (1, ['WRC', 'FW-inv', 'IRIW'], dict(FW, fwd_mutant='stalehome'), ('sep',),
                        'no', 'fail',
                        'checker self-test: a Fetch while the home is stale is served from home'),
    # ---------------------------------------------------------------- Task D
    'F-fail-none': (1, TWO_D + THREE_D + ['IRIW'], dict(FD_ASIS), ('sep', 'shared'), 'no', 'pass',
                    'the rules as written, no failure (D1, D2, D8 flush, lowest reader)'),
    'F-fail-wb': (1, TWO_D + THREE_D, dict(FD, fwd_wb=2), ('sep', 'shared'), 'no', 'pass',
                  'releases: up to 2 one-page Writebacks (W or forwarded RO) at any moment (D3, D10)'),
    'F-fail-peer': (1, TWO_D + THREE_D, dict(FD, fwd_peerfail=1, fwd_wb=1), ('sep', 'shared'), 'no',
                    'pass', 'one failed (or ambiguous) peer send (D4b, P5) + one release'),
    'F-fail-detach': (1, TWO_D + THREE_D, dict(FD, fwd_detach=2, fwd_wb=1), ('sep', 'shared'), 'no',
                      'pass', 'clean detaches (P6, D7, D10) of up to 2 finished processes + one release'),
    'F-fail-crash': (1, TWO_D + THREE_D, dict(FD, **CR, fwd_wb=1), ('sep', 'shared'), 'no', 'pass',
                     'one crash of any process at any moment (D4, D6, D7) + one release'),
    'F-fail-crash-peer': (1, TWO_D + THREE_D, dict(FD, **CR, fwd_peerfail=1), ('sep', 'shared'), 'no',
                          'pass', 'one crash + one failed peer send'),
    'F-fail-all-3p': (1, THREE_D, dict(FD, **CR, fwd_peerfail=1, fwd_wb=1, fwd_detach=1), ('sep',),
                      'no', 'pass', 'crash + peer failure + release + detach, 3 processes'),
    'F-fail-p2': (2, TWO_D, dict(FD, **CR, fwd_wb=1), ('sep', 'shared'), 'no', 'pass',
                  'phase 2 (switches; D9 flush) with one crash + one release'),
    'F-fail-asis-upgrade': (1, ['FW-up', 'FD-ww'], dict(FD_ASIS, **CR), ('sep',), 'no', 'fail',
                            'D8 as written (a reader upgrades without a flush): a crash of the '
                            'new owner loses values survivors read or wrote: expect non-SC'),
    'F-fail-asis-note': (1, ['WRC'], dict(FD_ASIS, fwd_upgrade='flush', **CR), ('sep',), 'no', 'fail',
                         'P3/P4 as written, aborted mark cleared by a new note: expect deadlock'),
    'F-fail-asis-sticky': (1, ['WRC'], dict(FD_ASIS, fwd_upgrade='flush', fwd_abort_mark='sticky',
                                             **CR), ('sep',), 'no', 'fail',
                           'P3/P4 as written, aborted mark kept until answered: expect deadlock'),
    'F-fail-asis-d3': (1, ['WRC'], dict(FD, fwd_d3='asis', fwd_wb=2), ('sep',), 'no', 'fail',
                       'D3 as written: the source\'s Writeback is ignored once another reader\'s '
                       'Writeback made the home current: expect deadlock'),
    'F-fail-asis-return': (1, ['WRC'], dict(FD, **CR, fwd_peerfail=1, fwd_late_return='accept'),
                           ('shared',), 'no', 'fail', 'D4b "elsewhere" as written: a late '
                           'ForwardReturn refreshes the home with old data: expect non-SC'),
    'F-fail-asis-returnid': (1, ['WRC'], dict(FD, **CR, fwd_peerfail=1, fwd_return_id=False),
                             ('shared',), 'no', 'fail', 'ForwardReturn without the forward\'s id: '
                             'a late one aborts a later forward and refreshes the home with old '
                             'data: expect non-SC'),
    'F-fail-flushlost-home': (1, ['FW-inv'], dict(FD, **CR, fwd_flush_lost='home'), ('sep',), 'no',
                              'fail', 'flush target lost and C uses the home while readers '
                              'remain: expect non-SC'),
    'F-fail-mut-acceptaborted': (1, ['WRC'], dict(FD, **CR, fwd_dmut='acceptaborted'), ('sep',),
                                 'no', 'fail', 'mutant: R installs Pages after ForwardAborted'),
    'F-fail-mut-nohandshake': (1, ['MP', 'MP+pre'], dict(FD, **CR, fwd_dmut='nohandshake'),
                               ('sep',), 'no', 'fail',
                               'mutant: source lost -> C serves R from home without the abort handshake'),
    'F-fail-mut-noskip': (1, ['MP', 'MP+pre'], dict(FD, fwd_wb=1, fwd_dmut='noskip'), ('sep',),
                          'no', 'fail', 'mutant: S does not skip a Forward for a page it wrote back'),
    'F-fail-mut-detachdrop': (1, ['FW-inv', 'WRC'], dict(FD, fwd_detach=2, fwd_dmut='detachdrop'),
                              ('sep',), 'no', 'fail',
                              'mutant: a reader of a stale page drops its copy at detach without writeback'),
    'F-fail-mut-flushdrop': (1, ['FW-inv'], dict(FD, fwd_dmut='flushdrop'), ('sep',), 'no', 'fail',
                             'mutant: the Downgrade-flush drops the reader\'s copy (answers None)'),
    # ---------------------------------------------------------------- Task E
    'F-backup-none': (1, TWO_E + THREE_E, dict(FB), ('sep', 'shared'), 'no', 'pass',
                      'backup upgrade (E1-E5), no failure'),
    'F-backup-wb': (1, TWO_E + THREE_E, dict(FB, fwd_wb=2), ('sep', 'shared'), 'no', 'pass',
                    'backup upgrade, up to 2 releases'),
    'F-backup-peer': (1, TWO_E + THREE_E, dict(FB, fwd_peerfail=1, fwd_wb=1), ('sep', 'shared'),
                      'no', 'pass', 'backup upgrade, one failed/ambiguous peer send + one release'),
    'F-backup-detach': (1, TWO_E + THREE_E, dict(FB, fwd_detach=2, fwd_wb=1), ('sep', 'shared'),
                        'no', 'pass', 'backup upgrade, 2 detaches (BackupHome) + one release'),
    'F-backup-crash': (1, TWO_E + THREE_E, dict(FB, **CR, fwd_wb=1), ('sep', 'shared'), 'no',
                       'pass', 'backup upgrade, one crash of any process (restore) + one release'),
    'F-backup-crash-peer': (1, TWO_E + THREE_E, dict(FB, **CR, fwd_peerfail=1), ('sep', 'shared'),
                            'no', 'pass', 'backup upgrade, one crash + one failed peer send'),
    'F-backup-crash-detach': (1, TWO_E + THREE_E, dict(FB, **CR, fwd_detach=1), ('sep', 'shared'),
                              'no', 'pass', 'backup upgrade, one crash + one detach'),
    'F-backup-all-3p': (1, THREE_E, dict(FB, **CR, fwd_peerfail=1, fwd_wb=1, fwd_detach=1), ('sep',),
                        'no', 'pass', 'backup upgrade, crash + peer failure + release + detach, '
                        '3 processes'),
    'F-backup-roll': (1, TWO_E + THREE_E, dict(FB, **CR, fwd_backup_again='roll', fwd_wb=1),
                      ('sep', 'shared'), 'no', 'pass', 'variant roll (a new backup generation '
                      'replaces an older one instead of the flush): crash + release'),
    'F-backup-roll-detach': (1, TWO_E + THREE_E, dict(FB, **CR, fwd_backup_again='roll',
                                                      fwd_detach=1, fwd_peerfail=1),
                             ('sep', 'shared'), 'no', 'pass',
                             'variant roll: crash + detach + peer failure'),
    'F-backup-p2': (2, TWO_E, dict(FB, **CR, fwd_wb=1), ('sep', 'shared'), 'no', 'pass',
                    'phase 2 (switches; D9 flush releases backups) with one crash + one release'),
    'F-backup-mut-earlyrelease': (1, ['FW-up', 'FD-ww', 'FB-rr'], dict(FB, **CR, fwd_bkmut='earlyrelease'),
                                  ('sep',), 'no', 'fail',
                                  'mutant: backups dropped as soon as the owner is granted'),
    'F-backup-mut-norestore': (1, ['FW-up', 'FD-ww', 'FB-rr'], dict(FB, **CR, fwd_bkmut='norestore'),
                               ('sep',), 'no', 'fail',
                               'mutant: owner lost -> the home (behind) is used, no restore'),
    'F-backup-mut-nowait': (1, ['FW-up', 'FD-ww'], dict(FB, fwd_bkmut='nowait'), ('sep',), 'no',
                            'fail', 'mutant: grant without waiting for the BackupAcks'),
    'F-backup-mut-detachdrop': (1, ['FD-ww', 'FB-rr'], dict(FB, **CR, fwd_detach=1,
                                                          fwd_bkmut='bkdetachdrop'),
                                ('sep',), 'no', 'fail',
                                'mutant: a detaching backup holder drops its backup'),
}
# sweeps restricted to some initial modes (state space)
MODES = {'A-p2-iriw-r': [('I', 'I')], 'A-p2-iriw-w': [('I', 'I')]}
GROUPS = {
    'A-all': [k for k in SWEEPS if k.startswith('A-')],
    'B-all': [k for k in SWEEPS if k.startswith('B-')],
    'F-all': [k for k in SWEEPS if k.startswith('F-') and not k.startswith('F-fail')
              and not k.startswith('F-backup')],
    'F-fail-all': [k for k in SWEEPS if k.startswith('F-fail')],
    'F-backup-all': [k for k in SWEEPS if k.startswith('F-backup')],
}


def run(name, traces=False, quiet=False, only=None):
    phase, tests, over, layouts, pad, expected, desc = SWEEPS[name]
    if only:
        tests = [t for t in tests if t in only]
    print(f'######## {name}: {desc}', flush=True)
    t0 = time.time()
    tot = nbad = ncyc = nconf = nmiss = 0
    maxatt = 0
    first = None
    fwd = over.get('forward', 'none') != 'none'
    caught = {}            # Task C: check -> number of configurations it failed
    cover = {}
    for tn in tests:
        t = D.TESTS[tn]
        for kw in D.configs_pad(t, layouts, pad if phase == 1 else
                                ('auto1' if pad == 'auto' else pad)):
            if name in MODES and tuple(kw['modes']) not in MODES[name]:
                continue
            cfg = D.Cfg(switch=(phase == 2), **over, **kw)
            R = D.explore(t, cfg)
            nconf += 1
            tot += R.states
            maxatt = max(maxatt, R.maxatt)
            bad, txt = D.summarize(R, show_traces=traces, max_traces=1, show_livelock=traces)
            sat = cfg.count_attempts and R.maxatt >= D.ATT_CAP
            if R.swmr or sat:
                bad = True
            nbad += bad
            ncyc += bool(R.livelock)
            nmiss += bool(R.sc - set(R.outcomes))
            if fwd:
                for k, v in R.cover.items():
                    cover[k] = cover.get(k, 0) + v
                for k, hit in (('nonSC', R.nonsc or R.reg_viol), ('assert', R.errors),
                               ('swmr', R.swmr), ('incoh', R.incoherent),
                               ('deadlock', R.deadlocks), ('stuck', R.stuck),
                               ('cycle', R.livelock)):
                    if hit:
                        caught[k] = caught.get(k, 0) + 1
            if (bad or R.livelock) and (first is None or R.states < first[0]):
                first = (R.states, tn, kw)
            if not quiet or bad or R.livelock:
                print(('  ' if not bad else '! ') + txt, flush=True)
    ok_run = nbad == 0 and ncyc == 0
    verdict = 'OK' if ok_run == (expected == 'pass') else 'UNEXPECTED'
    print(f'SWEEP {name}: states={tot} configs={nconf} violating={nbad} cycles={ncyc} '
          f'maxatt={maxatt} sc_missing={nmiss} {time.time() - t0:.0f}s expected={expected} -> {verdict}'
          + (f' caught={",".join(f"{k}:{v}" for k, v in caught.items()) or "-"}' if fwd else '')
          + (f'  (smallest failing: {first[1]} {first[2]})' if first else '')
          + (' fwd[' + ' '.join(f'{k}={v}' for k, v in sorted(cover.items())) + ']' if fwd else ''),
          flush=True)
    return verdict == 'OK'


def main():
    argv = sys.argv[1:]
    only = None
    if '--tests' in argv:
        k = argv.index('--tests')
        only = argv[k + 1].split(',')
        del argv[k:k + 2]
    args = [a for a in argv if not a.startswith('--')]
    traces = '--traces' in argv
    quiet = '--quiet' in argv
    if not args or args == ['list']:
        for k, v in SWEEPS.items():
            print(f'{k:20s} phase {v[0]}  expect {v[5]:4s}  {v[6]}')
        return
    names = []
    for a in args:
        names += GROUPS.get(a, [a])
    ok = all([run(n, traces, quiet, only) for n in names])
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
