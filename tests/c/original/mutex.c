/*
 * mutex.c - a program in the original system's shape for tests/tests/original.rs: a fresh named
 * semaphore is a mutex (count 1 on first use), with no post before the first wait.
 *
 *   ./mutex <nproc> <rounds> <session>
 *
 * The parent forks nproc-1 children, then every process calls dsm_init2 at the default
 * coordinator and adds 1 to a plain shared counter `rounds` times, each increment guarded by
 * dsm_wait_sem("u") / dsm_post_sem("u"). gid 0 prints "result: total=T expected=E".
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dsm/dsm.h"
#include "dsm/dsm_util.h"

int main(int argc, const char *argv[]) {
    unsigned int p = 0, rounds = 0;
    if (argc != 4 || sscanf(argv[1], "%u", &p) != 1 || sscanf(argv[2], "%u", &rounds) != 1 || p == 0) {
        fprintf(stderr, "Usage: %s <nproc> <rounds> <session>\n", argv[0]);
        exit(EXIT_FAILURE);
    }
    int is_parent = 1;
    for (unsigned int i = 1; i < p; i++) {
        pid_t pid = fork();
        ASSERT_STATE(pid >= 0);
        if (pid == 0) {
            is_parent = 0;
            break;
        }
    }
    unsigned int *count = (unsigned int *)dsm_init2(argv[3], p, 4096);
    for (unsigned int i = 0; i < rounds; i++) {
        dsm_wait_sem("u");
        *count = *count + 1;
        dsm_post_sem("u");
    }
    dsm_barrier();
    unsigned int total = *count;
    int gid = dsm_get_gid();
    dsm_exit();
    if (gid == 0) {
        printf("result: total=%u expected=%u\n", total, p * rounds);
    }
    int failed = 0;
    if (is_parent) {
        int status;
        while (wait(&status) > 0) {
            failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        }
    }
    return total == p * rounds && !failed ? EXIT_SUCCESS : EXIT_FAILURE;
}
