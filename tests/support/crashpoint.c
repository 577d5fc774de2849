/*
 * Crash points for ferry's durability tests, without a VM: an LD_PRELOAD shim that counts the
 * durability-relevant calls of a whole process and, at the Nth call of one kind, kills the
 * process before the call happens or fails that call with EIO or ENOSPC.
 *
 * Why a shim and not strace: strace's `inject=...:when=N` counts per thread, and sled writes
 * from a pool of threads; these counters are process-wide (one atomic per kind), so N names
 * exactly one call whatever thread makes it. Why C: the test crate forbids unsafe Rust, and
 * interposing libc symbols is unsafe by nature.
 *
 * Built by tests/it/crashpoint.rs: cc -shared -fPIC -O2 -o crashpoint.so crashpoint.c -ldl
 * It works only for a dynamically linked glibc binary run natively (not static musl, not under
 * qemu-user, where the host's LD_PRELOAD means nothing to the guest's loader).
 *
 * Environment (the shim is inert, a plain forwarder, unless one of the first two is set):
 *   FERRY_CRASH_COUNTS=<file>  map a counter block onto <file> (created, 128 bytes): the
 *                              counts survive SIGKILL and tell the test what happened
 *   FERRY_CRASH_CALL=<kind>    fsync | fdatasync | sync_file_range | rename | unlink | pwrite
 *   FERRY_CRASH_AT=<n>         the 1-based process-wide index of the call to act on
 *   FERRY_CRASH_ACTION=<a>     kill (SIGKILL to the whole process before the call; the default)
 *                              | eio | enospc (fail the call with that errno, performing nothing)
 *   FERRY_CRASH_STICKY=1       with eio/enospc: fail every later call of that kind too (a
 *                              failed disk usually stays failed)
 *   FERRY_CRASH_TRACE=<file>   append one line per counted call: "<kind> <n> <tid> <thread>"
 *
 * Kinds group the symbols: rename = rename, renameat, renameat2; unlink = unlink, unlinkat;
 * pwrite = pwrite, pwrite64.
 *
 * The counter block, 16 little-endian u64 (see tests/it/crashpoint/shim.rs, `Counts`):
 *   [0] magic "FCRASHP1"  [1..=6] calls per kind, in the order above  [7] 1 once the action
 *   fired  [8] calls failed by eio/enospc  [9] pid of the last process that mapped the block
 *   [10] when the action fired, ns since the epoch (CLOCK_REALTIME, as the test's server logs
 *   requests)  [11] when, after that, an fsync, fdatasync or sync_file_range first succeeded
 *   (0: never): the window in which nothing written can have become durable
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum kind { K_FSYNC, K_FDATASYNC, K_SYNC_FILE_RANGE, K_RENAME, K_UNLINK, K_PWRITE, K_COUNT };

static const char *const KIND_NAMES[K_COUNT] = {
    "fsync", "fdatasync", "sync_file_range", "rename", "unlink", "pwrite",
};

enum {
    SLOT_MAGIC = 0,
    SLOT_COUNTS = 1,
    SLOT_FIRED = 7,
    SLOT_FAILED = 8,
    SLOT_PID = 9,
    SLOT_FIRED_NS = 10,
    SLOT_SYNCED_NS = 11,
    SLOTS = 16
};
static const uint64_t MAGIC = 0x3150485341524346ull; /* "FCRASHP1" little-endian */

enum action { A_KILL, A_EIO, A_ENOSPC };

static int active;              /* 0: forward only */
static uint64_t local[SLOTS];   /* the counter block when no file is given */
static uint64_t *block = local; /* or the mapped file */
static int target = -1;         /* kind to act on, -1: count only */
static uint64_t target_at;      /* 1-based */
static enum action action = A_KILL;
static int sticky;
static int trace_fd = -1;

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_sync_file_range)(int, off64_t, off64_t, unsigned int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);

static void *next(const char *name) { return dlsym(RTLD_NEXT, name); }

static void resolve(void) {
    real_fsync = next("fsync");
    real_fdatasync = next("fdatasync");
    real_sync_file_range = next("sync_file_range");
    real_rename = next("rename");
    real_renameat = next("renameat");
    real_renameat2 = next("renameat2");
    real_unlink = next("unlink");
    real_unlinkat = next("unlinkat");
    real_pwrite = next("pwrite");
    real_pwrite64 = next("pwrite64");
}

static void map_counts(const char *path) {
    /* Raw syscalls: nothing here may re-enter the shim. */
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || syscall(SYS_ftruncate, fd, (long)(SLOTS * sizeof(uint64_t))) != 0) {
        fprintf(stderr, "crashpoint: cannot open %s: %s\n", path, strerror(errno));
        _exit(121);
    }
    void *p = mmap(NULL, SLOTS * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "crashpoint: cannot map %s: %s\n", path, strerror(errno));
        _exit(121);
    }
    syscall(SYS_close, fd);
    block = p;
}

__attribute__((constructor)) static void crashpoint_init(void) {
    resolve();
    const char *counts = getenv("FERRY_CRASH_COUNTS");
    const char *call = getenv("FERRY_CRASH_CALL");
    if ((counts == NULL || *counts == '\0') && (call == NULL || *call == '\0'))
        return;
    if (counts != NULL && *counts != '\0')
        map_counts(counts);
    if (call != NULL && *call != '\0') {
        for (int k = 0; k < K_COUNT; k++)
            if (strcmp(call, KIND_NAMES[k]) == 0)
                target = k;
        const char *at = getenv("FERRY_CRASH_AT");
        target_at = at ? strtoull(at, NULL, 10) : 0;
        const char *a = getenv("FERRY_CRASH_ACTION");
        if (a == NULL || *a == '\0' || strcmp(a, "kill") == 0)
            action = A_KILL;
        else if (strcmp(a, "eio") == 0)
            action = A_EIO;
        else if (strcmp(a, "enospc") == 0)
            action = A_ENOSPC;
        else
            target = -2;
        if (target < 0 || target_at == 0) {
            fprintf(stderr, "crashpoint: bad FERRY_CRASH_CALL/AT/ACTION (%s, %s, %s)\n", call,
                    at ? at : "", a ? a : "");
            _exit(122);
        }
        const char *s = getenv("FERRY_CRASH_STICKY");
        sticky = s != NULL && strcmp(s, "1") == 0;
    }
    const char *trace = getenv("FERRY_CRASH_TRACE");
    if (trace != NULL && *trace != '\0')
        trace_fd = (int)syscall(SYS_openat, AT_FDCWD, trace,
                                O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    block[SLOT_MAGIC] = MAGIC;
    block[SLOT_PID] = (uint64_t)getpid();
    active = 1;
}

static void trace_call(enum kind k, uint64_t n) {
    char name[17] = {0};
    char line[96];
    prctl(PR_GET_NAME, name, 0, 0, 0);
    int len = snprintf(line, sizeof line, "%s %llu %ld %s\n", KIND_NAMES[k], (unsigned long long)n,
                       (long)syscall(SYS_gettid), name);
    if (len > 0)
        syscall(SYS_write, trace_fd, line, (size_t)len);
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* After the action fired: notes the first sync that succeeds (`ret` is its result). */
static int after_sync(int ret) {
    if (active && ret == 0 && __atomic_load_n(&block[SLOT_FIRED], __ATOMIC_SEQ_CST) != 0) {
        uint64_t none = 0;
        __atomic_compare_exchange_n(&block[SLOT_SYNCED_NS], &none, now_ns(), 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST);
    }
    return ret;
}

/* Counts one call of kind `k`; returns 0 to perform it, or an errno to fail it with. */
static int before(enum kind k) {
    if (!active)
        return 0;
    uint64_t n = __atomic_add_fetch(&block[SLOT_COUNTS + k], 1, __ATOMIC_SEQ_CST);
    if (trace_fd >= 0)
        trace_call(k, n);
    if ((int)k != target || n < target_at || (n > target_at && !(sticky && action != A_KILL)))
        return 0;
    if (__atomic_load_n(&block[SLOT_FIRED], __ATOMIC_SEQ_CST) == 0) {
        __atomic_store_n(&block[SLOT_FIRED_NS], now_ns(), __ATOMIC_SEQ_CST);
        __atomic_store_n(&block[SLOT_FIRED], 1, __ATOMIC_SEQ_CST);
    }
    if (action == A_KILL) {
        kill(getpid(), SIGKILL); /* the whole process, every thread, before the call */
        for (;;)
            pause();
    }
    __atomic_add_fetch(&block[SLOT_FAILED], 1, __ATOMIC_SEQ_CST);
    return action == A_EIO ? EIO : ENOSPC;
}

#define GUARD(kind, fail)                                                                          \
    do {                                                                                           \
        int e_ = before(kind);                                                                     \
        if (e_ != 0) {                                                                             \
            errno = e_;                                                                            \
            return fail;                                                                           \
        }                                                                                          \
    } while (0)

#define ENSURE(fn)                                                                                 \
    do {                                                                                           \
        if (real_##fn == NULL)                                                                     \
            real_##fn = next(#fn);                                                                 \
        if (real_##fn == NULL) {                                                                   \
            errno = ENOSYS;                                                                        \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

int fsync(int fd) {
    ENSURE(fsync);
    GUARD(K_FSYNC, -1);
    return after_sync(real_fsync(fd));
}

int fdatasync(int fd) {
    ENSURE(fdatasync);
    GUARD(K_FDATASYNC, -1);
    return after_sync(real_fdatasync(fd));
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    ENSURE(sync_file_range);
    GUARD(K_SYNC_FILE_RANGE, -1);
    return after_sync(real_sync_file_range(fd, offset, nbytes, flags));
}

int rename(const char *from, const char *to) {
    ENSURE(rename);
    GUARD(K_RENAME, -1);
    return real_rename(from, to);
}

int renameat(int fromdir, const char *from, int todir, const char *to) {
    ENSURE(renameat);
    GUARD(K_RENAME, -1);
    return real_renameat(fromdir, from, todir, to);
}

int renameat2(int fromdir, const char *from, int todir, const char *to, unsigned int flags) {
    ENSURE(renameat2);
    GUARD(K_RENAME, -1);
    return real_renameat2(fromdir, from, todir, to, flags);
}

int unlink(const char *path) {
    ENSURE(unlink);
    GUARD(K_UNLINK, -1);
    return real_unlink(path);
}

int unlinkat(int dir, const char *path, int flags) {
    ENSURE(unlinkat);
    GUARD(K_UNLINK, -1);
    return real_unlinkat(dir, path, flags);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t offset) {
    ENSURE(pwrite);
    GUARD(K_PWRITE, -1);
    return real_pwrite(fd, buf, len, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t offset) {
    ENSURE(pwrite64);
    GUARD(K_PWRITE, -1);
    return real_pwrite64(fd, buf, len, offset);
}
