/*
 * agentic-sandbox-init: starts one ProcessSandbox guest and reports exactly how it ended.
 *
 * The crate forbids `unsafe` Rust, so the work that has to happen between fork and exec
 * (namespaces, dropping root, rlimits) is done here, in a small C program built by the crate's
 * build.rs, embedded in the library and written once to disk by `ProcessSandbox::new`.
 *
 *   host (Rust) --spawn--> L  launcher: reads stdin, creates the namespaces, forks I, exits
 *                          I  init, PID 1 of the new PID namespace: forks G, reaps everything,
 *                             kills the whole namespace when G ends or the host says stop,
 *                             writes the report
 *                          G  the guest: drops root, sets the rlimits, execs the program
 *
 * Why an init that is not the guest: PID 1 of a namespace ignores signals it has no handler
 * for (SIGXCPU would no longer stop a busy guest), and every orphan is re-parented to it. When
 * I exits the kernel SIGKILLs everything left in the namespace, including processes that left
 * the process group with setsid(), so nothing of a run outlives it.
 *
 * fd 0 of L is a Unix socket to the host (the "control" socket):
 *   host -> L: an 8-byte little-endian length, then that many bytes of guest stdin. The guest
 *              gets them as a sealed memfd on its fd 0. Anything after that (a byte, or the
 *              host shutting the socket down) asks I to stop the run.
 *   I/L -> host: the report, text lines, then EOF:
 *     agentic-sandbox-init 1
 *     held [netns] [pidns] [userns] [uid:N] [subreaper]
 *     status <raw wait status of G>          (absent when G never ran)
 *     usage <user_us> <sys_us> <maxrss_kib>  (all processes I reaped: the whole tree with a
 *                                             PID namespace)
 *     error <stage> <errno>                  (setup failed; the program did not run)
 *     end
 * The guest never holds the control socket (close-on-exec before the program starts), so it
 * cannot forge the report. The host knows the run ended when the report ends (EOF): L does
 * not wait for I, which saves a process wake-up per run; I stays in L's process group, which
 * the host kills after every run.
 *
 * Options (before `--`):
 *   --net --pid --user     new network / PID / user namespace (user: for non-root hosts)
 *   --require              fail (error record) instead of running without a namespace asked for
 *   --uid=N --gid=N        as root: run the guest as N (groups dropped)
 *   --cpu=S --as=B --fsize=B --nproc=N   rlimits of the guest (cpu: soft S, hard S+1)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define NO_LIMIT ((unsigned long long)-1)

struct options {
    int net, pid, user, require;
    long long uid, gid; /* -1: keep */
    unsigned long long cpu, as, fsize, nproc;
    char **argv;
};

struct held {
    int netns, pidns, userns, uid_dropped;
};

static int ctl = -1;

/* Fork placement. A forked child is queued on whichever CPU the scheduler picks; when every
 * CPU is busy it can wait there a whole time slice (milliseconds) although its parent is about
 * to sleep and free its own. Each fork here (L -> I, I -> G) is followed at once by the parent
 * sleeping or exiting, so the parent pins itself to the CPU it is on for the fork, and both
 * restore the previous affinity right after: the guest runs wherever it is allowed to. */
static cpu_set_t affinity;
static int pinned;

static void pin_for_fork(void) {
    cpu_set_t here;
    int cpu = sched_getcpu();
    pinned = 0;
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof affinity, &affinity) != 0) return;
    CPU_ZERO(&here);
    CPU_SET(cpu, &here);
    pinned = sched_setaffinity(0, sizeof here, &here) == 0;
}

static void unpin(void) {
    if (pinned) sched_setaffinity(0, sizeof affinity, &affinity);
    pinned = 0;
}

static void put(const char *text) {
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = send(ctl, text, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return; /* the host is gone; nobody to tell */
        text += n;
        len -= (size_t)n;
    }
}

static void put_held(const struct held *held, const struct options *o, int subreaper) {
    char line[160];
    char uid[32] = "";
    if (held->uid_dropped) snprintf(uid, sizeof uid, " uid:%lld", o->uid);
    snprintf(line, sizeof line, "agentic-sandbox-init 1\nheld%s%s%s%s%s\n",
             held->netns ? " netns" : "", held->pidns ? " pidns" : "",
             held->userns ? " userns" : "", subreaper ? " subreaper" : "", uid);
    put(line);
}

/* A setup failure before the guest could run: report it and stop. */
static void fail(const struct held *held, const struct options *o, const char *stage, int err) {
    char line[96];
    put_held(held, o, 0);
    snprintf(line, sizeof line, "error %s %d\nend\n", stage, err);
    put(line);
    _exit(125);
}

static int parse_u64(const char *text, unsigned long long *out) {
    char *end;
    errno = 0;
    *out = strtoull(text, &end, 10);
    return errno == 0 && end != text && *end == '\0' && text[0] != '-';
}

static int parse(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof *o);
    o->uid = o->gid = -1;
    o->cpu = o->as = o->fsize = o->nproc = NO_LIMIT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        unsigned long long v;
        if (strcmp(a, "--") == 0) {
            if (i + 1 >= argc) return 0;
            o->argv = &argv[i + 1];
            return 1;
        }
        if (strcmp(a, "--net") == 0) o->net = 1;
        else if (strcmp(a, "--pid") == 0) o->pid = 1;
        else if (strcmp(a, "--user") == 0) o->user = 1;
        else if (strcmp(a, "--require") == 0) o->require = 1;
        else if (strncmp(a, "--uid=", 6) == 0 && parse_u64(a + 6, &v) && v < 0xffffffffULL) o->uid = (long long)v;
        else if (strncmp(a, "--gid=", 6) == 0 && parse_u64(a + 6, &v) && v < 0xffffffffULL) o->gid = (long long)v;
        else if (strncmp(a, "--cpu=", 6) == 0 && parse_u64(a + 6, &v)) o->cpu = v;
        else if (strncmp(a, "--as=", 5) == 0 && parse_u64(a + 5, &v)) o->as = v;
        else if (strncmp(a, "--fsize=", 8) == 0 && parse_u64(a + 8, &v)) o->fsize = v;
        else if (strncmp(a, "--nproc=", 8) == 0 && parse_u64(a + 8, &v)) o->nproc = v;
        else return 0;
    }
    return 0;
}

static int read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Receives the guest's stdin from the host into a sealed memfd; returns it or -errno. */
static int receive_stdin(void) {
    unsigned char header[8];
    if (read_full(ctl, header, sizeof header) != 0) return -EPIPE;
    unsigned long long len = 0;
    for (int i = 7; i >= 0; i--) len = (len << 8) | header[i];
    int fd = memfd_create("agentic-sandbox-stdin", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -errno;
    static char buf[65536];
    while (len > 0) {
        size_t want = len < sizeof buf ? (size_t)len : sizeof buf;
        ssize_t n = read(ctl, buf, want);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -EPIPE;
        if (write_full(fd, buf, (size_t)n) != 0) return -errno;
        len -= (unsigned long long)n;
    }
    /* The guest reads its stdin; it may not rewrite it. */
    fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
    if (lseek(fd, 0, SEEK_SET) != 0) return -errno;
    return fd;
}

static int set_limit(int resource, unsigned long long soft, unsigned long long hard) {
    struct rlimit r = {.rlim_cur = soft, .rlim_max = hard};
    return setrlimit(resource, &r);
}

/* G: the guest. Errors before exec go to `err` (close-on-exec: it closes on success). */
static void guest(const struct options *o, int err) {
    struct { int stage, errnum; } e;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (o->uid >= 0) {
        /* Groups, then group, then user: after setuid we could no longer drop the rest. */
        if (setgroups(0, NULL) != 0) { e.stage = 1; goto failed; }
        if (setgid((gid_t)o->gid) != 0) { e.stage = 1; goto failed; }
        if (setuid((uid_t)o->uid) != 0) { e.stage = 1; goto failed; }
        if (getuid() != (uid_t)o->uid || geteuid() != (uid_t)o->uid) { errno = EPERM; e.stage = 1; goto failed; }
    }
    /* After the drop: RLIMIT_NPROC counts the user we now are. */
    if (o->cpu != NO_LIMIT && set_limit(RLIMIT_CPU, o->cpu, o->cpu + 1) != 0) { e.stage = 2; goto failed; }
    if (o->as != NO_LIMIT && set_limit(RLIMIT_AS, o->as, o->as) != 0) { e.stage = 2; goto failed; }
    if (o->fsize != NO_LIMIT && set_limit(RLIMIT_FSIZE, o->fsize, o->fsize) != 0) { e.stage = 2; goto failed; }
    if (o->nproc != NO_LIMIT && set_limit(RLIMIT_NPROC, o->nproc, o->nproc) != 0) { e.stage = 2; goto failed; }
    /* No core files: they would be written into the working directory. */
    if (set_limit(RLIMIT_CORE, 0, 0) != 0) { e.stage = 2; goto failed; }
    execvp(o->argv[0], o->argv);
    {
        /* Like a shell: the program could not be run is 127 (not found) or 126. */
        int code = errno == ENOENT ? 127 : 126;
        dprintf(2, "agentic-sandbox: cannot execute %s: %s\n", o->argv[0], strerror(errno));
        _exit(code);
    }
failed:
    e.errnum = errno;
    (void)!write(err, &e, sizeof e);
    _exit(125);
}

/* I: init of the run. Never returns. */
static void init(const struct options *o, struct held held) {
    char line[160];
    int subreaper = 0;
    unpin();
    /* No parent-death signal: L exits at once. What stops a run whose host went away (gave
     * up, crashed) is the host's end of the control socket closing, below, and the host's
     * kill of the process group, which we are in. */
    if (!held.pidns) {
        /* Without a PID namespace, orphans come back to us rather than to the host's init,
         * so that they are reaped (zombies count against RLIMIT_NPROC) and counted. */
        subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;
    }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    int errp[2];
    if (sfd < 0) fail(&held, o, "signalfd", errno);
    if (pipe2(errp, O_CLOEXEC) != 0) fail(&held, o, "pipe", errno);
    pin_for_fork();
    pid_t g = fork();
    unpin();
    if (g < 0) fail(&held, o, "fork", errno);
    if (g == 0) {
        close(errp[0]);
        guest(o, errp[1]);
    }
    close(errp[1]);
    /* The output pipes and stdin belong to the guest: their EOF must not wait for us. */
    close(0);
    close(1);
    close(2);

    int status = 0, done = 0;
    for (;;) {
        struct pollfd fds[2] = {{.fd = sfd, .events = POLLIN}, {.fd = ctl, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        struct signalfd_siginfo info;
        while (read(sfd, &info, sizeof info) > 0) {}
        for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0) break;
            if (p == g) {
                status = st;
                done = 1;
            }
        }
        if (done) break;
        /* Any byte or EOF from the host: stop. */
        if (fds[1].revents) break;
    }

    /* End of the run: nothing of it survives. With a PID namespace, kill(-1) reaches every
     * process in it (setsid or not) but not us; without one, only the guest itself, and the
     * host's group kill does the rest. */
    if (held.pidns) kill(-1, SIGKILL);
    else if (!done) kill(g, SIGKILL);
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, held.pidns || !done ? 0 : WNOHANG);
        if (p < 0 && errno == EINTR) continue;
        if (p <= 0) break;
        if (p == g) {
            status = st;
            done = 1;
            if (!held.pidns) {
                /* Only stragglers already dead are reaped from here on. */
                for (;;) {
                    p = waitpid(-1, &st, WNOHANG);
                    if (p <= 0) break;
                }
                break;
            }
        }
    }
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    getrusage(RUSAGE_CHILDREN, &ru);

    struct { int stage, errnum; } e;
    ssize_t got = read(errp[0], &e, sizeof e);
    if (got == (ssize_t)sizeof e) {
        fail(&held, o, e.stage == 1 ? "drop-privileges" : "rlimit", e.errnum);
    }
    put_held(&held, o, subreaper);
    snprintf(line, sizeof line, "status %d\nusage %lld %lld %ld\nend\n", status,
             (long long)ru.ru_utime.tv_sec * 1000000LL + ru.ru_utime.tv_usec,
             (long long)ru.ru_stime.tv_sec * 1000000LL + ru.ru_stime.tv_usec, ru.ru_maxrss);
    put(line);
    _exit(0);
}

int main(int argc, char **argv) {
    struct options o;
    struct held held = {0, 0, 0, 0};
    if (!parse(argc, argv, &o)) {
        fprintf(stderr, "agentic-sandbox-init: bad arguments (this program is started by "
                        "agentic-sandbox, not by hand)\n");
        return 125;
    }
    /* The control socket moves off fd 0 and is closed on exec: the guest never has it. */
    ctl = fcntl(0, F_DUPFD_CLOEXEC, 3);
    if (ctl < 0) return 125;
    int in = receive_stdin();
    if (in < 0) fail(&held, &o, "stdin", -in);
    if (dup2(in, 0) != 0) fail(&held, &o, "stdin", errno);
    close(in);

    if (o.user) {
        if (unshare(CLONE_NEWUSER) == 0) held.userns = 1;
        else if (o.require) fail(&held, &o, "userns", errno);
    }
    if (o.net) {
        if (unshare(CLONE_NEWNET) == 0) held.netns = 1;
        else if (o.require) fail(&held, &o, "netns", errno);
    }
    if (o.pid) {
        if (unshare(CLONE_NEWPID) == 0) held.pidns = 1;
        else if (o.require) fail(&held, &o, "pidns", errno);
    }
    held.uid_dropped = o.uid >= 0;

    pin_for_fork();
    pid_t i = fork();
    if (i < 0) fail(&held, &o, "fork", errno);
    if (i == 0) init(&o, held);
    return 0;
}
