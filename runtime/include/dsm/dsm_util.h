/*
 * dsm_util.h - the utilities of the original system's dsm/dsm_util.h that user programs use.
 *
 *     #include "dsm/dsm.h"
 *     #include "dsm/dsm_util.h"
 *
 *     double t = dsm_getWallTime();
 *     int *v = dsm_zalloc(n * sizeof *v);       // zeroed, exits on failure
 *     ASSERT_COND(n > 0);                       // exits with file:line and the expression
 *     printf("%.3fs\n", dsm_getWallTime() - t);
 *
 * Everything here is header-only (static inline): nothing extra to link, and the header
 * compiles without warnings under -Wall -Wextra (with or without -D_GNU_SOURCE, -std=c99 or
 * gnu11). Only the functions user programs relied on are kept; the original's internal helpers
 * (named POSIX semaphores, shared files, xterm redirection) have no meaning here.
 *
 * Panics print one line to stderr ("[pid] fatal: message", plus errno's text for dsm_panic
 * when errno is set) and exit(EXIT_FAILURE), as the original did.
 */
#ifndef DSM_DSM_UTIL_H
#define DSM_DSM_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DSM_UTIL_NORETURN __attribute__((noreturn))
#define DSM_UTIL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define DSM_UTIL_NORETURN
#define DSM_UTIL_PRINTF(f, a)
#endif

/* Exits with a message naming the file, line and expression when E is false. */
#define ASSERT_STATE(E) ((E) ? (void)0 : \
    dsm_panicf("State violation (%s:%d): %s", __FILE__, __LINE__, #E))

/* As ASSERT_STATE, for conditions on inputs. */
#define ASSERT_COND(E) ((E) ? (void)0 : \
    dsm_panicf("Condition unmet (%s:%d): %s", __FILE__, __LINE__, #E))

/* The larger and the smaller of two values (each argument may be evaluated twice). */
#ifndef MAX
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif
#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif

/* Marks a variable or parameter as deliberately unused. */
#define UNUSED(x) (void)(x)

/* Size of a memory page in bytes (also the unit in which the shared map is kept coherent). */
#define DSM_PAGESIZE sysconf(_SC_PAGESIZE)

/* Prints "[pid] fatal: msg" (with errno's text when errno is set) to stderr and exits with
 * EXIT_FAILURE. */
static inline DSM_UTIL_NORETURN void dsm_panic(const char *msg) {
    int e = errno;
    if (e != 0) {
        fprintf(stderr, "[%ld] fatal: %s (errno %d: %s)\n", (long)getpid(), msg, e, strerror(e));
    } else {
        fprintf(stderr, "[%ld] fatal: %s\n", (long)getpid(), msg);
    }
    exit(EXIT_FAILURE);
}

/* Prints "[pid] fatal: " and the printf-formatted message to stderr and exits with
 * EXIT_FAILURE. (The original understood %s %d %f %u %p; every printf conversion works here.) */
static inline DSM_UTIL_NORETURN DSM_UTIL_PRINTF(1, 2) void dsm_panicf(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "[%ld] fatal: ", (long)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_FAILURE);
}

/* Prints "[pid] warning: msg" to stderr and returns. */
static inline void dsm_warning(const char *msg) {
    fprintf(stderr, "[%ld] warning: %s\n", (long)getpid(), msg);
}

/* Wall-clock time in seconds (gettimeofday), for timing a program's phases. */
static inline double dsm_getWallTime(void) {
    struct timeval tv;
    if (gettimeofday(&tv, NULL) != 0) {
        dsm_panic("dsm_getWallTime: gettimeofday failed");
    }
    return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

/* size bytes of zeroed memory from the C heap (not the shared map); exits when out of memory.
 * Free it with free(). */
static inline void *dsm_zalloc(size_t size) {
    void *p = calloc(1, size ? size : 1);
    if (p == NULL) {
        dsm_panicf("dsm_zalloc: cannot allocate %zu bytes", size);
    }
    return p;
}

#ifdef __cplusplus
}
#endif

#endif /* DSM_DSM_UTIL_H */
