/* Power-cut shim (LD_PRELOAD, test-only): logs every write to the database and its -wal with
 * the bytes it overwrites, until the next fsync/fdatasync of that file, so that after a kill -9
 * the test driver (apply.py) can drop or tear what a power cut would have lost.
 *
 * Env: WF_SHIM_DB   absolute, resolved path of the database (its "-wal" is tracked too)
 *      WF_SHIM_LOG  log file (appended; no fsync needed: kill -9 keeps the page cache)
 *      WF_SHIM_FSYNC_EIO=n  the nth fsync/fdatasync of a tracked file fails with EIO (once)
 *      WF_SHIM_FSYNC_EIO_FILE=db|wal|commit  count only that file's syncs (db: checkpoints;
 *                   commit: WAL syncs with frames pending, i.e. commits, not checkpoints)
 *      WF_SHIM_ARM  if set, fsyncs are only counted once this path exists (e.g. after ready)
 *
 * Log record: struct rec header, then `pre_len` bytes of pre-image. Kinds: 'W' write,
 * 'T' truncate (off = new size, size_before = old size), 'S' synced, 'E' fsync failed (EIO).
 * Each record is one write() to an O_APPEND fd, so a kill never leaves half a record.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_TRUNC_PRE (8 << 20) /* cap on a truncate's pre-image; the rest is zero-filled */

struct rec {
    uint32_t magic; /* 0x57465348 "WFSH" */
    uint8_t kind;
    uint8_t file; /* 0 = database, 1 = -wal */
    uint16_t pad;
    int64_t off;
    int64_t len;
    int64_t pre_len;
    int64_t size_before;
};

static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char db_path[4096], wal_path[4096], arm_path[4096];
static int log_fd = -1;
static long eio_at = 0, syncs_seen = 0;
static int eio_file = -1; /* -1 = either file, 0 db, 1 wal, 2 wal with writes pending */
static long pending[2];   /* writes since the file's last sync */
static int eio_done = 0;

__attribute__((constructor)) static void shim_init(void) {
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_write = dlsym(RTLD_NEXT, "write");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    const char *db = getenv("WF_SHIM_DB"), *lg = getenv("WF_SHIM_LOG");
    const char *eio = getenv("WF_SHIM_FSYNC_EIO"), *arm = getenv("WF_SHIM_ARM");
    if (!db || !lg) return; /* inert: nothing is tracked */
    snprintf(db_path, sizeof db_path, "%s", db);
    snprintf(wal_path, sizeof wal_path, "%s-wal", db);
    if (arm) snprintf(arm_path, sizeof arm_path, "%s", arm);
    if (eio) eio_at = atol(eio);
    const char *eio_f = getenv("WF_SHIM_FSYNC_EIO_FILE");
    if (eio_f) eio_file = strcmp(eio_f, "commit") == 0 ? 2 : strcmp(eio_f, "wal") == 0 ? 1 : 0;
    log_fd = open(lg, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

/* 0 = database, 1 = -wal, -1 = not tracked. */
static int tracked(int fd) {
    if (log_fd < 0 || fd < 0) return -1;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return -1;
    path[n] = 0;
    if (strcmp(path, db_path) == 0) return 0;
    if (strcmp(path, wal_path) == 0) return 1;
    return -1;
}

static int64_t file_size(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (int64_t)st.st_size : -1;
}

/* Append one record (header + optional pre-image); caller holds mu. */
static void log_rec(char kind, int file, int64_t off, int64_t len, const void *pre,
                    int64_t pre_len, int64_t size_before) {
    struct rec r = {0x57465348u, (uint8_t)kind, (uint8_t)file, 0, off, len, pre_len, size_before};
    struct iovec iov[2] = {{&r, sizeof r}, {(void *)pre, (size_t)(pre_len > 0 ? pre_len : 0)}};
    if (writev(log_fd, iov, pre_len > 0 ? 2 : 1) < 0) {
        perror("wf power-cut shim: log write failed");
        abort(); /* a silent gap in the log would make the power-cut model lie */
    }
}

/* Log a write of `len` bytes at `off` with its pre-image; caller holds mu. */
static void log_write(int file, int fd, int64_t off, size_t len) {
    char *pre = malloc(len ? len : 1);
    if (!pre) abort();
    ssize_t got = pread(fd, pre, len, off);
    log_rec('W', file, off, (int64_t)len, pre, got > 0 ? got : 0, file_size(fd));
    pending[file]++;
    free(pre);
}

static ssize_t do_pwrite(int fd, const void *buf, size_t n, off64_t off, int use64) {
    int file = tracked(fd);
    if (file < 0)
        return use64 ? real_pwrite64(fd, buf, n, off) : real_pwrite(fd, buf, n, (off_t)off);
    pthread_mutex_lock(&mu);
    log_write(file, fd, off, n);
    ssize_t rc = use64 ? real_pwrite64(fd, buf, n, off) : real_pwrite(fd, buf, n, (off_t)off);
    int saved = errno;
    pthread_mutex_unlock(&mu);
    errno = saved;
    return rc;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return do_pwrite(fd, buf, n, off, 0); }
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) { return do_pwrite(fd, buf, n, off, 1); }

ssize_t write(int fd, const void *buf, size_t n) {
    int file = tracked(fd);
    if (file < 0) return real_write(fd, buf, n);
    pthread_mutex_lock(&mu);
    int flags = fcntl(fd, F_GETFL);
    off64_t off = (flags >= 0 && (flags & O_APPEND)) ? file_size(fd) : lseek64(fd, 0, SEEK_CUR);
    log_write(file, fd, off, n);
    ssize_t rc = real_write(fd, buf, n);
    int saved = errno;
    pthread_mutex_unlock(&mu);
    errno = saved;
    return rc;
}

static int do_truncate(int fd, off64_t size, int use64) {
    int file = tracked(fd);
    if (file < 0) return use64 ? real_ftruncate64(fd, size) : real_ftruncate(fd, (off_t)size);
    pthread_mutex_lock(&mu);
    int64_t before = file_size(fd);
    int64_t cut = before > size ? before - size : 0;
    if (cut > MAX_TRUNC_PRE) cut = MAX_TRUNC_PRE;
    char *pre = malloc(cut ? cut : 1);
    if (!pre) abort();
    ssize_t got = cut ? pread(fd, pre, cut, size) : 0;
    log_rec('T', file, size, 0, pre, got > 0 ? got : 0, before);
    free(pre);
    int rc = use64 ? real_ftruncate64(fd, size) : real_ftruncate(fd, (off_t)size);
    int saved = errno;
    pthread_mutex_unlock(&mu);
    errno = saved;
    return rc;
}

int ftruncate(int fd, off_t size) { return do_truncate(fd, size, 0); }
int ftruncate64(int fd, off64_t size) { return do_truncate(fd, size, 1); }

static int armed(void) {
    struct stat st;
    return arm_path[0] == 0 || stat(arm_path, &st) == 0;
}

/* The mutex is held across the real sync, so no write can slip in between the sync and its
 * marker and be wrongly counted durable. */
static int do_sync(int fd, int data_only) {
    int file = tracked(fd);
    if (file < 0) return data_only ? real_fdatasync(fd) : real_fsync(fd);
    pthread_mutex_lock(&mu);
    int counted = eio_file < 0 || eio_file == file || (eio_file == 2 && file == 1 && pending[1]);
    if (eio_at > 0 && !eio_done && counted && armed() && ++syncs_seen == eio_at) {
        eio_done = 1;
        /* Linux after a writeback error: the dirty pages are marked clean, so what was written
         * since the last good sync never reaches the disk, even if a later fsync succeeds. */
        log_rec('E', file, 0, 0, NULL, 0, file_size(fd));
        pthread_mutex_unlock(&mu);
        fprintf(stderr, "wf power-cut shim: injected EIO on fsync #%ld (%s)\n", eio_at,
                file ? "wal" : "db");
        errno = EIO;
        return -1;
    }
    int rc = data_only ? real_fdatasync(fd) : real_fsync(fd);
    int saved = errno;
    if (rc == 0) {
        log_rec('S', file, 0, 0, NULL, 0, file_size(fd));
        pending[file] = 0;
    }
    pthread_mutex_unlock(&mu);
    errno = saved;
    return rc;
}

int fsync(int fd) { return do_sync(fd, 0); }
int fdatasync(int fd) { return do_sync(fd, 1); }
