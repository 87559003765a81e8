/*
 * contrast.c - contrast stretch of a generated grayscale image held in the shared map, written
 * against dsm.h; the same algorithm as examples/src/bin/contrast.rs.
 *
 * gid 0 generates a deterministic low-contrast image and puts it in the map (a 16-byte header,
 * width and height as uint64_t, then one byte per pixel, row-major). Every process finds the
 * minimum and maximum of the whole image, then stretches its own band of rows in place:
 * out = (p - min) * 255 / (max - min). gid 0 compares the result with a single-process reference
 * and optionally writes it as a binary PGM.
 *
 *   ./contrast -n 4 [-g 640x480] [-o out.pgm]   forks, then every process calls dsm_init
 *   dsm run -n 4 -- ./contrast                  one process per launch (count from DSM_NPROCS)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dsm/dsm.h>

#define HEADER 16

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

/* A gradient with deterministic noise, squeezed into 60..190 (as contrast.rs --generate). */
static void generate(uint8_t *px, size_t width, size_t height) {
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (size_t y = 0; y < height; y++) {
        for (size_t x = 0; x < width; x++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            size_t noise = (size_t)(state >> 59);
            size_t gradient = x * 60 / width + y * 40 / height;
            size_t v = 60 + gradient + noise;
            px[y * width + x] = (uint8_t)(v < 190 ? v : 190);
        }
    }
}

static uint8_t stretch(uint8_t p, uint8_t min, uint8_t max) {
    if (max == min) return 0;
    return (uint8_t)((unsigned)(p - min) * 255u / (unsigned)(max - min));
}

int main(int argc, char **argv) {
    unsigned nproc = 0;
    size_t width = 640, height = 480;
    const char *output = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "n:g:o:")) != -1) {
        switch (opt) {
        case 'n': nproc = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'g':
            if (sscanf(optarg, "%zux%zu", &width, &height) != 2 || width == 0 || height == 0) {
                fprintf(stderr, "-g: expected WIDTHxHEIGHT, e.g. 640x480\n");
                return 2;
            }
            break;
        case 'o': output = optarg; break;
        default: fprintf(stderr, "usage: %s [-n NPROC] [-g WxH] [-o OUT.pgm]\n", argv[0]); return 2;
        }
    }
    pid_t pids[256];
    if (nproc > 256) { fprintf(stderr, "-n: at most 256 processes\n"); return 2; }
    int children = fork_children(nproc, pids);

    dsm_cfg cfg = { .nproc = nproc, .sid_name = getenv("DSM_SESSION") ? NULL : "c-contrast",
                    .d_addr = NULL, .d_port = NULL, .map_size = HEADER + width * height };
    uint8_t *map = dsm_init(&cfg);
    volatile uint64_t *header = (volatile uint64_t *)map;
    uint8_t *px = map + HEADER;
    size_t gid = (size_t)dsm_get_gid(), n = dsm_get_nproc();

    uint8_t *original = NULL;
    if (gid == 0) {
        original = malloc(width * height);
        if (!original) { perror("malloc"); exit(2); }
        generate(original, width, height);
        memcpy(px, original, width * height);
        header[0] = width;
        header[1] = height;
    }
    dsm_barrier();
    size_t w = (size_t)header[0], h = (size_t)header[1];
    uint8_t min = 255, max = 0;
    for (size_t i = 0; i < w * h; i++) {
        if (px[i] < min) min = px[i];
        if (px[i] > max) max = px[i];
    }
    /* Nobody may overwrite pixels while another process still looks for the extremes. */
    dsm_barrier();
    size_t lo = h * gid / n, hi = h * (gid + 1) / n;
    for (size_t i = lo * w; i < hi * w; i++) px[i] = stretch(px[i], min, max);
    dsm_barrier();

    int correct = 1;
    if (gid == 0) {
        uint8_t rmin = 255, rmax = 0;
        for (size_t i = 0; i < w * h; i++) {
            if (original[i] < rmin) rmin = original[i];
            if (original[i] > rmax) rmax = original[i];
        }
        size_t differing = 0;
        for (size_t i = 0; i < w * h; i++) differing += px[i] != stretch(original[i], rmin, rmax);
        correct = differing == 0 && rmin == min && rmax == max;
        if (output) {
            FILE *f = fopen(output, "wb");
            if (!f || fprintf(f, "P5\n%zu %zu\n255\n", w, h) < 0 || fwrite(px, 1, w * h, f) != w * h) {
                perror(output);
                correct = 0;
            }
            if (f) fclose(f);
        }
        printf("result: size=%zux%zu min=%u max=%u nprocs=%zu differing_pixels=%zu correct=%s\n", w, h,
               (unsigned)min, (unsigned)max, n, differing, correct ? "true" : "false");
        fflush(stdout);
        free(original);
    }
    dsm_exit();
    int failed = wait_children(children, pids);
    return (gid == 0 && !correct) || failed ? 1 : 0;
}
