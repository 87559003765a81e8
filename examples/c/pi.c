/*
 * pi.c - parallel pi by integrating 4/(1+x^2) over [0,1] (midpoint rule), written against dsm.h.
 *
 * Each process sums its slice of the steps, then adds its partial into one shared double under
 * the semaphore "pi-lock". gid 0 prints the estimate; correct if within 1e-6 of pi.
 *
 *   ./pi -n 4 [-s STEPS]        forks 3 children, then all 4 call dsm_init (the original pattern)
 *   dsm run -n 4 -- ./pi        no -n: one process per launch, the count comes from DSM_NPROCS
 *
 * The coordinator, session and certificates come from DSM_COORDINATOR, DSM_SESSION (default
 * "c-pi") and DSM_CERT_DIR. -m BYTES sets the map size (default 4096).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dsm/dsm.h>

#define PI 3.14159265358979323846

/* Forks nproc-1 children before dsm_init; returns their count (0 in a child). */
static int fork_children(unsigned nproc, pid_t *pids) {
    for (unsigned i = 1; i < nproc; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); exit(2); }
        if (pid == 0) return 0;
        pids[i - 1] = pid;
    }
    return nproc > 0 ? (int)nproc - 1 : 0;
}

/* The forking parent waits for its children; returns non-zero if any failed. */
static int wait_children(int n, const pid_t *pids) {
    int failed = 0;
    for (int i = 0; i < n; i++) {
        int status = 0;
        if (waitpid(pids[i], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
    }
    return failed;
}

int main(int argc, char **argv) {
    unsigned nproc = 0; /* 0: from DSM_NPROCS (launched by dsm run / mpirun), no fork */
    unsigned long steps = 10000000;
    size_t map_size = 4096;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:m:")) != -1) {
        switch (opt) {
        case 'n': nproc = (unsigned)strtoul(optarg, NULL, 10); break;
        case 's': steps = strtoul(optarg, NULL, 10); break;
        case 'm': map_size = (size_t)strtoull(optarg, NULL, 10); break;
        default: fprintf(stderr, "usage: %s [-n NPROC] [-s STEPS] [-m MAP_SIZE]\n", argv[0]); return 2;
        }
    }
    if (steps == 0) { fprintf(stderr, "-s must be positive\n"); return 2; }
    pid_t pids[256];
    if (nproc > 256) { fprintf(stderr, "-n: at most 256 processes\n"); return 2; }
    int children = fork_children(nproc, pids);

    const char *sid = getenv("DSM_SESSION") ? NULL : "c-pi";
    dsm_cfg cfg = { .nproc = nproc, .sid_name = sid, .d_addr = NULL, .d_port = NULL, .map_size = map_size };
    volatile double *sum = dsm_init(&cfg);
    unsigned long gid = (unsigned long)dsm_get_gid();
    unsigned long n = dsm_get_nproc();

    double h = 1.0 / (double)steps, partial = 0.0;
    unsigned long lo = steps * gid / n, hi = steps * (gid + 1) / n;
    for (unsigned long i = lo; i < hi; i++) {
        double x = ((double)i + 0.5) * h;
        partial += 4.0 / (1.0 + x * x);
    }
    partial *= h;

    /* A fresh semaphore starts at 1, as in the original: a mutex, no initial post needed. */
    dsm_wait_sem("pi-lock");
    *sum += partial;
    dsm_post_sem("pi-lock");
    dsm_barrier();

    double pi = *sum, error = fabs(pi - PI);
    int correct = error < 1e-6;
    if (gid == 0) {
        printf("result: pi=%.12f error=%.3e steps=%lu nprocs=%lu correct=%s\n", pi, error, steps, n,
               correct ? "true" : "false");
        fflush(stdout);
    }
    dsm_exit();
    int failed = wait_children(children, pids);
    return (gid == 0 && !correct) || failed ? 1 : 0;
}
