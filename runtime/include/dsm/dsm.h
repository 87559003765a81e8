/*
 * dsm.h - C API of DSM, distributed shared memory for Linux x86-64.
 *
 * Compatible with the original system's header: N processes (usually a parent and the N-1
 * children it forked *before* dsm_init) each call dsm_init with the same session name, process
 * count and map size, get one shared map and a global id 0..N-1, and synchronize with barriers
 * and named semaphores. Loads and stores to the map are kept coherent across processes (and
 * machines) by the coordinator; aligned loads and stores up to 8 bytes are atomic.
 *
 *     #include <dsm/dsm.h>
 *
 *     dsm_cfg cfg = { .nproc = 4, .sid_name = "demo", .d_addr = "127.0.0.1",
 *                     .d_port = "4200", .map_size = 1 << 20 };
 *     int *map = dsm_init(&cfg);        // blocks until all 4 processes joined
 *     if (dsm_get_gid() == 0) map[0] = 42;
 *     dsm_barrier();                    // every process now sees map[0] == 42
 *     dsm_exit();
 *
 * Link: cc prog.c -ldsm -lpthread -lrt          (as the original; -lxed is no longer needed)
 *   or: cc prog.c $(pkg-config --cflags --libs dsm)
 *   or: cc -I/usr/local/include prog.c /usr/local/lib/libdsm.a -lpthread -ldl -lm
 *
 * A coordinator must be running (dsm-coordinator, or `dsm run -n N -- ./prog`, which starts one).
 * Certificates come from DSM_CERT_DIR, else ~/.config/dsm/certs.
 *
 * Errors: the functions that cannot return one print one line to stderr (what failed and what
 * to check) and exit(1), as the original did. The dsm_try_* variants return NULL or -1 instead;
 * dsm_last_error() then gives the message.
 *
 * Threads: dsm_init starts one runtime thread. Do not fork() after dsm_init (the child has no
 * runtime thread); fork before it. The calls may be made from several threads.
 */
#ifndef DSM_DSM_H
#define DSM_DSM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Session configuration. A NULL pointer or a zero field is taken from the environment (as set by
 * `dsm run`, or by hand):
 *   nproc    DSM_NPROCS, else OMPI_COMM_WORLD_SIZE, else PMI_SIZE (so `mpirun -n 4` works)
 *   sid_name DSM_SESSION
 *   d_addr   the host of DSM_COORDINATOR, else 127.0.0.1   (when d_addr and d_port are both NULL,
 *   d_port   the port of DSM_COORDINATOR, else 4200         DSM_COORDINATOR is used as is)
 *   map_size DSM_SIZE (bytes, or with a unit: 64KiB, 16MiB, 1GiB)
 * Explicit fields win over the environment. A NULL cfg means "everything from the environment".
 */
typedef struct dsm_cfg {
    unsigned int nproc;    /* number of processes in the session */
    const char *sid_name;  /* session name (up to 128 bytes, no control characters) */
    const char *d_addr;    /* coordinator host name or IP address */
    const char *d_port;    /* coordinator UDP port, as text ("4200") */
    size_t map_size;       /* shared map size in bytes, rounded up to whole pages */
} dsm_cfg;

/* The coordinator port used when none is given. */
#define DSM_DEFAULT_PORT 4200

/*
 * Attaches session cfg->sid_name of cfg->nproc processes and cfg->map_size bytes at the
 * coordinator cfg->d_addr:cfg->d_port. Blocks until all processes joined (DSM_ATTACH_TIMEOUT,
 * default 60s), then returns the shared map, zero-filled at session start. Exits on failure.
 */
void *dsm_init(dsm_cfg *cfg);

/* dsm_init at the default coordinator: DSM_COORDINATOR, else 127.0.0.1:4200. */
void *dsm_init2(const char *sid, unsigned int nproc, size_t map_size);

/* This process's global id, 0..nproc-1, in the order processes attached (-1 before dsm_init).
 * Launcher rank variables (DSM_RANK, OMPI_COMM_WORLD_RANK, PMI_RANK) do not change it. */
int dsm_get_gid(void);

/* Blocks until every process of the session called dsm_barrier. Exits on failure (a process of
 * the session died, the coordinator stopped): it never hangs on a lost process. */
void dsm_barrier(void);

/* Increments the named semaphore, waking its oldest waiter. A semaphore is created on first use
 * with count 1, as in the original system: a fresh one is a mutex (wait, critical section, post).
 * Names up to 64 bytes. */
void dsm_post_sem(const char *name);

/* Decrements the named semaphore (created at 1 on first use), blocking while it is 0. */
void dsm_wait_sem(const char *name);

/* Writes back this process's pages, leaves the session and unmaps the shared map. */
void dsm_exit(void);

/*
 * Copies the message of the most recent failure of any dsm_ function into buf (at most len-1
 * bytes plus a NUL, like snprintf) and returns its full length; 0 if nothing failed yet. The
 * message is not cleared by later successful calls. buf may be NULL if len is 0.
 */
int dsm_last_error(char *buf, size_t len);

/* Variants that return instead of exiting: NULL or -1 on failure (see dsm_last_error), else the
 * map or 0. */
void *dsm_try_init(dsm_cfg *cfg);
void *dsm_try_init2(const char *sid, unsigned int nproc, size_t map_size);
int dsm_try_barrier(void);
int dsm_try_post_sem(const char *name);
int dsm_try_wait_sem(const char *name);
int dsm_try_exit(void);

/* Number of processes of the session (0 before dsm_init). */
unsigned int dsm_get_nproc(void);

/* Size of the shared map in bytes (0 before dsm_init). */
size_t dsm_get_map_size(void);

#ifdef __cplusplus
}
#endif

#endif /* DSM_DSM_H */
