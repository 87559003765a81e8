/*
 * pingpong.c - a token goes around the ring of all processes ROUNDS times, written against dsm.h.
 *
 * Busy-wait version (default): process r spins on a volatile word in the shared map until
 * turn % nproc == r, then increments it; plain loads and stores, kept coherent by DSM.
 * Semaphore version (-S): process r waits on semaphore "pp-r", increments the word, posts
 * "pp-(r+1)". Semaphores start at 1 (as in the original), so every process but 0 first takes
 * the initial count of its own semaphore: then only process 0 may move first.
 *
 *   ./pingpong -n 2 [-r ROUNDS] [-S]     forks, then every process calls dsm_init
 *   dsm run -n 4 -- ./pingpong -S        one process per launch (count from DSM_NPROCS)
 *
 * gid 0 prints "result: ... correct=true|false"; the session comes from DSM_SESSION (default
 * "c-pingpong"), DSM_COORDINATOR and DSM_CERT_DIR.
 */
#define _POSIX_C_SOURCE 200809L
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dsm/dsm.h>

static int fork_children(unsigned nproc, pid_t *pids) {
    for (unsigned i = 1; i < nproc; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); exit(2); }
        if (pid == 0) return 0;
        pids[i - 1] = pid;
    }
    return nproc > 0 ? (int)nproc - 1 : 0;
}

static int wait_children(int n, const pid_t *pids) {
    int failed = 0;
    for (int i = 0; i < n; i++) {
        int status = 0;
        if (waitpid(pids[i], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
    }
    return failed;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    unsigned nproc = 0;
    uint64_t rounds = 1000;
    int use_sem = 0, opt;
    while ((opt = getopt(argc, argv, "n:r:S")) != -1) {
        switch (opt) {
        case 'n': nproc = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'r': rounds = strtoull(optarg, NULL, 10); break;
        case 'S': use_sem = 1; break;
        default: fprintf(stderr, "usage: %s [-n NPROC] [-r ROUNDS] [-S]\n", argv[0]); return 2;
        }
    }
    pid_t pids[256];
    if (nproc > 256) { fprintf(stderr, "-n: at most 256 processes\n"); return 2; }
    int children = fork_children(nproc, pids);

    dsm_cfg cfg = { .nproc = nproc, .sid_name = getenv("DSM_SESSION") ? NULL : "c-pingpong",
                    .d_addr = NULL, .d_port = NULL, .map_size = 4096 };
    volatile uint64_t *turn = dsm_init(&cfg);
    uint64_t gid = (uint64_t)dsm_get_gid(), n = dsm_get_nproc();
    char mine_sem[32], next_sem[32];
    snprintf(mine_sem, sizeof mine_sem, "pp-%llu", (unsigned long long)gid);
    snprintf(next_sem, sizeof next_sem, "pp-%llu", (unsigned long long)((gid + 1) % n));

    if (use_sem && gid != 0) dsm_wait_sem(mine_sem);
    dsm_barrier();
    double start = now();
    for (uint64_t mine = gid; mine < rounds; mine += n) {
        if (use_sem) {
            dsm_wait_sem(mine_sem);
        } else {
            unsigned spins = 0;
            while (*turn != mine) {
                if ((++spins & 63) == 0) sched_yield();
            }
        }
        *turn = mine + 1;
        if (use_sem) dsm_post_sem(next_sem);
    }
    dsm_barrier();
    double elapsed = now() - start;
    uint64_t final_turn = *turn;
    int correct = final_turn == rounds;
    if (gid == 0) {
        printf("result: mode=%s rounds=%llu turn=%llu nprocs=%llu time=%.3fms mean_handoff=%.1fus correct=%s\n",
               use_sem ? "semaphore" : "busy-wait", (unsigned long long)rounds,
               (unsigned long long)final_turn, (unsigned long long)n, elapsed * 1e3,
               rounds ? elapsed * 1e6 / (double)rounds : 0.0, correct ? "true" : "false");
        fflush(stdout);
    }
    dsm_exit();
    int failed = wait_children(children, pids);
    return (gid == 0 && !correct) || failed ? 1 : 0;
}
