/*
 * sessions.c - one parent running several sessions of the same name in a row, as the original's
 * primes example does, for tests/tests/original.rs.
 *
 *   ./sessions <nproc> <rounds> <session>
 *
 * Each round: fork nproc-1 children, dsm_init2(session, nproc, 4096), every process adds its
 * gid + 1 + round under the mutex semaphore "sum_guard", dsm_barrier, read the sum, dsm_exit,
 * children exit, the parent reaps them and prints "round R: sum=S expected=E".
 * The parent forks again after dsm_exit: the runtime must be gone by then.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dsm/dsm.h"
#include "dsm/dsm_util.h"

int main(int argc, const char *argv[]) {
    unsigned int p = 0, rounds = 0, bad = 0;
    if (argc != 4 || sscanf(argv[1], "%u", &p) != 1 || sscanf(argv[2], "%u", &rounds) != 1 || p == 0) {
        fprintf(stderr, "Usage: %s <nproc> <rounds> <session>\n", argv[0]);
        exit(EXIT_FAILURE);
    }
    for (unsigned int r = 0; r < rounds; r++) {
        int is_parent = 1;
        for (unsigned int i = 1; i < p; i++) {
            pid_t pid = fork();
            ASSERT_STATE(pid >= 0);
            if (pid == 0) {
                is_parent = 0;
                break;
            }
        }
        double t = dsm_getWallTime();
        unsigned int *sum = (unsigned int *)dsm_init2(argv[3], p, 4096);
        unsigned int gid = (unsigned int)dsm_get_gid();
        dsm_wait_sem("sum_guard");
        *sum += gid + 1 + r;
        dsm_post_sem("sum_guard");
        dsm_barrier();
        unsigned int res = *sum;
        dsm_exit();
        if (!is_parent) {
            exit(EXIT_SUCCESS);
        }
        int status;
        while (wait(&status) > 0) {
            bad |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        }
        unsigned int expected = p * (p + 1) / 2 + p * r;
        bad |= res != expected;
        printf("round %u: sum=%u expected=%u (%.3fs)\n", r, res, expected, dsm_getWallTime() - t);
        fflush(stdout);
    }
    return bad ? EXIT_FAILURE : EXIT_SUCCESS;
}
