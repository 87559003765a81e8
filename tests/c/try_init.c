/*
 * try_init.c - the error-handling side of dsm.h for tests/tests/capi.rs: attaches the session of
 * the environment (DSM_SESSION, DSM_NPROCS, DSM_COORDINATOR, DSM_CERT_DIR) with the map size of
 * argv[1] through dsm_try_init2; on failure prints "error: <dsm_last_error>" and exits 2.
 */
#include <stdio.h>
#include <stdlib.h>

#include <dsm/dsm.h>

int main(int argc, char **argv) {
    size_t size = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 4096;
    void *map = dsm_try_init2(NULL, 0, size);
    if (map == NULL) {
        char buf[1024];
        int len = dsm_last_error(buf, sizeof buf);
        printf("error: %s\n", buf);
        printf("length: %d\n", len);
        return 2;
    }
    printf("attached: gid %d of %u, %zu bytes\n", dsm_get_gid(), dsm_get_nproc(), dsm_get_map_size());
    fflush(stdout);
    if (dsm_try_barrier() != 0 || dsm_try_exit() != 0) return 3;
    return 0;
}
