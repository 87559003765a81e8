/*
 * sem_pingpong.c - the original system's semaphore ping-pong, for tests/tests/original.rs: each
 * side first consumes the initial count (1) of its semaphore, then the two hand a turn back and
 * forth `rounds` times through a plain shared word.
 *
 *   ./sem_pingpong <rounds> <session>      (forks one child; 2 processes)
 *
 * gid 0 prints "result: turn=T expected=E order_errors=N".
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dsm/dsm.h"
#include "dsm/dsm_util.h"

int main(int argc, const char *argv[]) {
    unsigned int rounds = 0, errors = 0;
    if (argc != 3 || sscanf(argv[1], "%u", &rounds) != 1) {
        fprintf(stderr, "Usage: %s <rounds> <session>\n", argv[0]);
        exit(EXIT_FAILURE);
    }
    pid_t child = fork();
    ASSERT_STATE(child >= 0);
    volatile unsigned int *turn = (volatile unsigned int *)dsm_init2(argv[2], 2, 4096);
    int gid = dsm_get_gid();

    /* Down once if process zero; down twice if process one, so it blocks until zero posts. */
    if (gid == 0) {
        dsm_wait_sem("sem_zero");
    } else {
        dsm_wait_sem("sem_one");
        dsm_wait_sem("sem_one");
    }
    for (unsigned int i = 0; i < rounds; i++) {
        /* Zero moves on even turns, one on odd ones; anything else is a lost hand-off. */
        if (*turn != 2 * i + (unsigned int)gid) errors++;
        *turn = *turn + 1;
        if (gid == 0) {
            dsm_post_sem("sem_one");
            dsm_wait_sem("sem_zero");
        } else {
            dsm_post_sem("sem_zero");
            if (i + 1 < rounds) dsm_wait_sem("sem_one");
        }
    }
    dsm_barrier();
    unsigned int final_turn = *turn;
    dsm_exit();
    if (gid == 0) {
        printf("result: turn=%u expected=%u order_errors=%u\n", final_turn, 2 * rounds, errors);
    }
    int failed = 0;
    if (child > 0) {
        int status;
        failed = waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    return final_turn == 2 * rounds && errors == 0 && !failed ? EXIT_SUCCESS : EXIT_FAILURE;
}
