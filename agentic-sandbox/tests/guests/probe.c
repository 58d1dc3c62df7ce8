/* The escape suite's C guest: one program, the attack chosen by argv[1]. It prints what it
 * managed to do; "READ"/"WROTE"/"ACCEPTED" lines mean an escape, and it exits 10 then. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

extern char **environ;

static int try_read(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("denied read %s: %s\n", path, strerror(errno));
        return 0;
    }
    char line[128] = {0};
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    printf("READ %s: %s\n", path, line);
    return 1;
}

static int try_write(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        printf("denied write %s: %s\n", path, strerror(errno));
        return 0;
    }
    int ok = fputs("pwned\n", f) >= 0;
    ok = (fclose(f) == 0) && ok;
    printf(ok ? "WROTE %s\n" : "denied write %s: short write\n", path);
    return ok;
}

/* Where the memory bomb publishes its blocks. */
static char *volatile kept;

/* Called through a volatile pointer so the compiler can neither inline nor turn the
 * recursion into a loop: every level is a real wasm call. */
static int deep(int n);
static int (*volatile next)(int) = deep;
static int deep(int n) { return next(n + 1) + 1; }

/* Each level keeps a buffer on the C (shadow) stack, which lives in linear memory. */
static int deep_frames(int n) {
    volatile char pad[512];
    pad[n % 512] = (char)n;
    return deep_frames(n + 1) + pad[0];
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    int escaped = 0;
    if (!strcmp(what, "read")) {
        for (int i = 2; i < argc; i++) escaped |= try_read(argv[i]);
    } else if (!strcmp(what, "write")) {
        for (int i = 2; i < argc; i++) escaped |= try_write(argv[i]);
    } else if (!strcmp(what, "symlink") && argc > 3) {
        if (symlink(argv[3], argv[2]) != 0) printf("denied symlink: %s\n", strerror(errno));
        escaped |= try_read(argv[2]);
    } else if (!strcmp(what, "socket")) {
        for (int fd = 0; fd < 64; fd++) {
            int conn = accept(fd, NULL, NULL);
            if (conn >= 0) {
                printf("ACCEPTED on fd %d\n", fd);
                escaped = 1;
            }
        }
        printf("no socket to use\n");
    } else if (!strcmp(what, "spin")) {
        volatile unsigned long n = 0;
        for (;;) n++;
    } else if (!strcmp(what, "malloc")) {
        size_t total = 0;
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) {
                fprintf(stderr, "malloc failed after %zu MiB\n", total >> 20);
                return 1;
            }
            memset(p, 1, 1 << 20);
            /* Publish the block, or the compiler may elide the allocation altogether. */
            kept = p;
            total += 1 << 20;
        }
    } else if (!strcmp(what, "recurse")) {
        return deep(0);
    } else if (!strcmp(what, "recurse-frames")) {
        return deep_frames(0);
    } else if (!strcmp(what, "flood")) {
        for (;;) puts("flood flood flood flood flood flood flood flood flood flood");
    } else if (!strcmp(what, "args")) {
        size_t total = 0;
        for (int i = 0; i < argc; i++) total += strlen(argv[i]);
        for (char **e = environ; e && *e; e++) total += strlen(*e);
        printf("argc=%d bytes=%zu\n", argc, total);
    } else if (!strcmp(what, "exit") && argc > 2) {
        return atoi(argv[2]);
    } else {
        fprintf(stderr, "unknown action %s\n", what);
        return 2;
    }
    return escaped ? 10 : 0;
}
