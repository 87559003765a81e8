/*
 * util.c - dsm/dsm_util.h as the original's programs use it, for tests/tests/original.rs.
 *
 *   ./util            prints "result: ..." facts about the utilities, exits 0
 *   ./util assert     fails an ASSERT_COND (must print the expression and exit 1)
 *   ./util panicf     calls dsm_panicf with a formatted message (must exit 1)
 *   ./util warning    prints a warning and exits 0
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dsm/dsm.h"
#include "dsm/dsm_util.h"

int main(int argc, char **argv) {
    UNUSED(argc);
    if (argv[1] != NULL && strcmp(argv[1], "assert") == 0) {
        int n = 0;
        ASSERT_COND(n > 0);
        return 0;
    }
    if (argv[1] != NULL && strcmp(argv[1], "panicf") == 0) {
        dsm_panicf("bad value %d in %s", 42, "util");
    }
    if (argv[1] != NULL && strcmp(argv[1], "warning") == 0) {
        dsm_warning("just a warning");
        return 0;
    }
    double t0 = dsm_getWallTime();
    time_t now = time(NULL);
    unsigned char *z = dsm_zalloc(1000);
    int zeroed = 1;
    for (int i = 0; i < 1000; i++) zeroed &= z[i] == 0;
    free(z);
    double t1 = dsm_getWallTime();
    ASSERT_STATE(t1 >= t0);
    printf("result: wall_minus_time=%.0f zeroed=%d max=%d min=%d pagesize=%ld gid_before_init=%d\n",
           t0 - (double)now, zeroed, MAX(3, 7), MIN(3, 7), (long)DSM_PAGESIZE, dsm_get_gid());
    return 0;
}
