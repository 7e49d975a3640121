/*
 * shmdict._core -- the part of shmdict that Python cannot do by itself.
 *
 * Everything here operates on one shared-memory segment that the Python layer
 * has already mapped, validated and described to us.  This file does only:
 *
 *   - the bounded, lock-free probe loop of the open-addressing hash table;
 *   - claiming, publishing and tombstoning slots with CPU atomics;
 *   - atomic operations on int64 value words (add, cas, exchange, ...);
 *   - cross-process row locks (futex words holding the owner's identity);
 *   - seqlock-protected records for the Struct layout;
 *   - the small "admission" spinlock that keeps the live count exact;
 *   - repairing a stripe after its holder died.
 *
 * The segment's format (header, stripe records, slots, reach array, the
 * state-word and lock-word bits, the geometry rule and the format version)
 * is defined once, in format.h; see there.  The module exports every offset
 * and constant Python needs from it (HEADER_FIELDS, MAGIC, ...).
 *
 * Lookups stop at an empty slot or past reach[home], whichever comes first.
 * Deleted slots become tombstones, never empty again (a lock-free reader
 * could otherwise stop short of a key), so under churn the empty slots run
 * out; reach keeps a miss short all the same: it only grows to the worst
 * clustering the table ever had, which at load 0.75 is a few dozen slots.
 *
 * "word0" is the first 8 bytes of the value area and sits right after the
 * state word, so the pair (state, word0) can be changed by one 16-byte
 * compare-and-swap.  That is what makes every value update safe against the
 * slot being deleted and reused by another key at the same moment: the update
 * only lands if the state word (with its generation) is still the one the
 * caller looked up.  Counter values live in word0; Lock and Struct keep their
 * lock word there.
 *
 * A table may grow (format.h, "Tiers"): the Core holds an array of tiers,
 * each a segment of the same format with its own counts; a slot index is
 * (tier << SHMDICT_TIER_SHIFT) | local, so the key cache and every method
 * taking a slot work unchanged.  Lookups probe the tiers in order; a miss
 * in all of them looks at tier 0's published tier count and, when others
 * grew the table, asks Python (Core(attach_tiers=...)) to map the new ones.
 * A new key is inserted entirely in C (insert_new_slot): its stripe taken
 * and released here, Python called only to grow or repair.
 *
 * Nothing read from the segment is trusted: every index and length is checked
 * against the geometry given at construction, which was itself checked against
 * the size of the mapping, and every loop is bounded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Python 3.9 (still supported) has no Py_NewRef. */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o) { Py_INCREF(o); return o; }
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <math.h>
#include <semaphore.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* The segment format (format.h owns it; short names for this file)         */
/* ------------------------------------------------------------------------ */

#include "format.h"

#define KIND_EMPTY      SHMDICT_KIND_EMPTY
#define KIND_CLAIMED    SHMDICT_KIND_CLAIMED
#define KIND_PUBLISHED  SHMDICT_KIND_PUBLISHED
#define KIND_TOMBSTONE  SHMDICT_KIND_TOMBSTONE
#define GEN_SHIFT       SHMDICT_GEN_SHIFT
#define GEN_MASK        SHMDICT_GEN_MASK
#define KLEN_SHIFT      SHMDICT_KLEN_SHIFT
#define KLEN_MASK       SHMDICT_KLEN_MASK
#define TAG_SHIFT       SHMDICT_TAG_SHIFT
#define PID_MASK        SHMDICT_PID_MASK
#define WAITERS_BIT     SHMDICT_WAITERS_BIT

static inline unsigned st_kind(uint64_t s) { return (unsigned)(s & SHMDICT_KIND_MASK); }
static inline uint64_t st_gen(uint64_t s) { return (s >> GEN_SHIFT) & GEN_MASK; }
static inline uint64_t st_klen(uint64_t s) { return (s >> KLEN_SHIFT) & KLEN_MASK; }
static inline uint64_t st_high(uint64_t s) { return s >> TAG_SHIFT; }

static inline uint64_t
st_make(unsigned kind, uint64_t gen, uint64_t klen, uint64_t high)
{
    return (uint64_t)kind | ((gen & GEN_MASK) << GEN_SHIFT)
           | ((klen & KLEN_MASK) << KLEN_SHIFT) | (high << TAG_SHIFT);
}

/* ------------------------------------------------------------------------ */
/* Result codes and errors                                                  */
/* ------------------------------------------------------------------------ */

/* One error channel: every function here that returns int or a pointer
 * returns -1 or NULL exactly when a Python exception is set, and nothing
 * else.  What a primitive did is a non-negative result code; the public
 * ones are exported (OK, RECOVERED, ...) and are the values of
 * shmdict.layouts.Outcome, which the Redis backend shares. */
#define RC_ERROR         -1  /* an exception is set                          */
#define RC_OK            0
#define RC_RECOVERED     1   /* acquired, but the previous owner had died   */
#define RC_TIMEOUT       2   /* not acquired within the timeout             */
#define RC_STALE         3   /* the slot no longer holds the caller's key   */
#define RC_NOT_OWNER     4   /* release of a lock this process doesn't hold */
#define RC_BUSY          5   /* delete refused: the lock is held            */
#define RC_FULL          6   /* internal: the live count reached capacity   */
#define RC_NO_FREE_SLOT  7   /* internal: no free slot below capacity       */
#define RC_FOUND         8   /* internal: the key to insert was there       */

/* The exceptions the core raises besides Python's own, kept in the module's
 * state (as msgspec does): shmdict.errors' TableFull and CorruptSegment,
 * imported at init, and two classes of this module.  CorruptGeometry is
 * the Core() constructor's "this header cannot be right": a CorruptSegment
 * that is also a ValueError, which it raised before.  TornRecord is private:
 * writers kept completing writes faster than a lock-free read could copy
 * a record (record_copy), which the Python layer then reads under the
 * record lock. */
typedef struct {
    PyObject *TableFull;
    PyObject *CorruptSegment;
    PyObject *CorruptGeometry;
    PyObject *TornRecord;
} CoreState;

static struct PyModuleDef coremodule;

/* The module's state, or NULL with an exception set (the module is gone:
 * only possible during interpreter shutdown). */
static CoreState *
core_state(void)
{
    PyObject *m = PyState_FindModule(&coremodule);
    if (m == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "shmdict's core module is not loaded");
        return NULL;
    }
    return (CoreState *)PyModule_GetState(m);
}

/* ------------------------------------------------------------------------ */
/* Atomics                                                                  */
/* ------------------------------------------------------------------------ */

static inline uint64_t load_acq(const void *p)
{ return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
static inline void store_rel(void *p, uint64_t v)
{ __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }
static inline int cas64(void *p, uint64_t *expected, uint64_t desired)
{
    return __atomic_compare_exchange_n((uint64_t *)p, expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* The 16-byte compare-and-swap of (state, word0).  GCC inlines the __sync
 * form as one `lock cmpxchg16b` with -mcx16 (x86-64) and as an exclusive
 * pair loop on aarch64; it is a full barrier. */
typedef unsigned __int128 u128;
static inline u128 pair(uint64_t state, uint64_t word0)
{ return ((u128)word0 << 64) | state; }

static inline int
cas_pair(char *slot, uint64_t state, uint64_t word0,
         uint64_t new_state, uint64_t new_word0, uint64_t *seen_word0)
{
    u128 old = __sync_val_compare_and_swap((u128 *)slot, pair(state, word0),
                                           pair(new_state, new_word0));
    if (seen_word0)
        *seen_word0 = (uint64_t)(old >> 64);
    return old == pair(state, word0);
}

/* ------------------------------------------------------------------------ */
/* Process identity and liveness                                            */
/* ------------------------------------------------------------------------ */

/* Reads state and start time (field 22, clock ticks since boot) of a pid
 * from /proc.  Returns 1 with *start set, 0 when the process does not exist
 * (or is a zombie), and -1 when it cannot tell: /proc could not be read for
 * another reason (out of descriptors, EMFILE/ENFILE, or memory).  Callers
 * must never take -1 for "dead".  Plain open/read: no stdio allocation. */
static int
proc_stat(pid_t pid, unsigned long long *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return (errno == ENOENT || errno == ESRCH) ? 0 : -1;
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    int read_errno = errno;
    close(fd);
    if (n < 0)
        return read_errno == ESRCH ? 0 : -1;
    buf[n] = '\0';
    /* The command name is in parentheses and may contain anything: parse
     * from the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] == '\0' || p[2] == '\0')
        return -1;
    char state = p[2];
    if (state == 'Z' || state == 'X' || state == 'x')
        return 0;
    /* After ") S " come fields 4..; start time is field 22. */
    p += 2;
    for (int field = 3; field < 22 && p != NULL; field++) {
        p = strchr(p, ' ');
        if (p) p++;
    }
    if (p == NULL)
        return -1;
    *start = strtoull(p, NULL, 10);
    return 1;
}

/* This process's owner id, computed once (at import, and in a forked child
 * right after the fork) and kept: computing it needs a descriptor, and a
 * process at its descriptor limit must not record a wrong identity.  0
 * until known; identity_ready() raises when it cannot be known yet. */
static uint64_t my_id_cache;

static uint64_t
compute_id(void)
{
    unsigned long long start = 0;
    pid_t pid = getpid();
    if (proc_stat(pid, &start) != 1)
        return 0;
    return ((uint64_t)(start & 0xffffffffu) << 32) | ((uint64_t)pid & PID_MASK);
}

static void reset_id_after_fork(void) { my_id_cache = compute_id(); }

static inline uint64_t
my_id(void)
{
    return my_id_cache;
}

/* 0 when this process's identity is known, -1 with OSError set when it
 * cannot be read (it is retried on every call until it can). */
static int
identity_failed(void)
{
    my_id_cache = compute_id();
    if (my_id_cache != 0)
        return 0;
    PyErr_Format(PyExc_OSError, "shmdict cannot read this process's start time from "
                 "/proc/%d/stat (out of file descriptors?); it is needed to record "
                 "lock owners", (int)getpid());
    return -1;
}
#define identity_ready() (my_id_cache != 0 || identity_failed() == 0)

static inline uint64_t id_pid(uint64_t id) { return id & PID_MASK; }
static inline int is_me(uint64_t id) { return id_pid(id) == id_pid(my_id()); }

/* Is the process named by an owner id still alive?  A pid that exists but
 * started at another time is a different process: the owner is dead.  The
 * start time must match even when the id's is 0: ids come from my_id(), which
 * always records it, so a word with a small pid and no start time is garbage
 * (a corrupted segment: one stray byte over a free lock word gives "pid 1"),
 * and taking it for a live owner would make its waiters wait forever.
 * "Dead" is concluded only from what the kernel says (ESRCH, no /proc
 * entry, a zombie, another start time), never from a failed read: when the
 * start time cannot be read (out of descriptors) a pid that exists is
 * taken to be alive. */
static int
id_alive(uint64_t id)
{
    pid_t pid = (pid_t)id_pid(id);
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    unsigned long long start;
    int r = proc_stat(pid, &start);
    if (r < 0)
        return 1;           /* unknown: assume alive */
    if (r == 0)
        return 0;
    uint32_t want = (uint32_t)(id >> 32);
    return (uint32_t)start == want;
}

/* ------------------------------------------------------------------------ */
/* Waiting                                                                  */
/* ------------------------------------------------------------------------ */

static double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sleep until the 32-bit word at addr changes from `expected`, a wake-up, or
 * `seconds` pass.  The futex is a shared one (no FUTEX_PRIVATE_FLAG) because
 * the waker is another process. */
static void
futex_wait(void *addr, uint32_t expected, double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void
futex_wake_all(void *addr)
{
    syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void
sleep_seconds(double s)
{
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------------ */
/* The Core object                                                          */
/* ------------------------------------------------------------------------ */

/* One tier of the table (format.h, "Tiers"): tier 0 is the segment the
 * Core was made on; tiers k >= 1 are added by add_tier() as the table grows
 * (each keeps its own mapping exported while the Core lives). */
typedef struct {
    char *base;
    struct shmdict_header *header;
    struct shmdict_stripe *stripes;  /* the tier's stripe records (live counts) */
    char *slots;
    uint16_t *reach;         /* nslots entries, see the header comment      */
    uint64_t nslots, capacity;
    Py_buffer view;          /* tiers k >= 1: their own mapping            */
    int has_view;
} Tier;

/* An exclusive lock word a thread of this process holds while it waits,
 * without the GIL, for something else (a writer waiting for the readers
 * of an rw lock): a node on the waiting thread's stack, linked into its
 * Core's list under the GIL.  A close meanwhile (Core_release_view) gives
 * the word back while the mapping is still there, and marks the node, so
 * the waiter, which may not touch the segment any more, owes nothing: a
 * table closed under a waiting writer must not leave the row locked for
 * as long as this process lives. */
typedef struct HeldWait {
    struct HeldWait *next;
    uint64_t slot, state;    /* the lock: word0 of this slot, in this state */
    int released;            /* set by the close that gave it back         */
} HeldWait;

typedef struct {
    PyObject_HEAD
    Py_buffer view;          /* keeps the mapping exported while we live   */
    int has_view;
    char *base;
    uint64_t nslots, slot_size, key_size, key_area, extra_size;
    uint64_t nstripes, capacity, stripes_offset, data_offset;
    struct shmdict_header *header;
    struct shmdict_stripe *stripes;
    char *slots;
    uint16_t *reach;         /* nslots entries, see the header comment      */
    int64_t default_word0;   /* word0 of a new key                          */
    PyObject *default_extra; /* bytes: the extra value area of a new key    */
    PyObject *name;          /* str: the table's name, for messages         */
    PyObject *cache;         /* dict: key object -> (slot, state)           */
    PyObject *hash_fn;       /* hash_function(bytes, seed) -> int           */
    PyObject *seed;          /* int: the table's hash seed                  */
    PyObject *resolve_fn;    /* resolve(key, create) -> (slot, state, ...) | None */
    PyObject *insert_fn;     /* insert(encoded, hash) -> (slot, state, created) */
    PyObject *insert_with_fn; /* insert_with(key, word0) -> bool (created)  */
    PyObject *grow_fn;       /* grow(tiers_seen): make room, or raise TableFull */
    PyObject *attach_fn;     /* attach_tiers(): add_tier() the published tiers */
    Py_ssize_t cache_limit;
    double stall_seconds;    /* stall timeout: stripes and admission lock   */
    double stripe_poll;      /* seconds between looks at a stripe's holder  */
    sem_t **sems;            /* the stripe semaphores (attach_semaphores)   */
    unsigned long *stripe_thread; /* per stripe: the thread of ours holding it */
    uint64_t *stripe_epoch;  /* per stripe: its takeovers count when we took
                                it (see stripe_release)                     */
    uint64_t max_capacity;   /* tier 0's header, checked at construction    */
    unsigned ntiers;         /* tiers attached (tiers[0] is this segment)   */
    int attaching;           /* inside Core(attach_tiers=...)'s call         */
    long long takeovers;     /* stripes this Core took over from the dead   */
    HeldWait *held_waits;    /* locks held by this Core's waiting threads   */
    uint64_t reclaim_after;  /* expiry units: a full insert's reclaim walk
                                found nothing and no deadline before this   */
    int auto_compact;        /* inserts sweep tombstones when due (default) */
    double compact_not_before; /* monotonic: an insert's sweep gave up on a
                                stripe a live process held; none till then */
    int expiry_guard;        /* what keeps an expired key alive: 0 nothing
                                (Counter), 1 a holder in word0 (Lock, Struct),
                                2 that or a live reader cell (rw Lock)      */
    Tier tiers[SHMDICT_MAX_TIERS];
} Core;

#define TIER_SHIFT  SHMDICT_TIER_SHIFT
#define LOCAL_MASK  ((1ull << TIER_SHIFT) - 1)

static inline uint64_t tier_of(uint64_t i) { return i >> TIER_SHIFT; }
static inline uint64_t slot_index(uint64_t tier, uint64_t local)
{ return (tier << TIER_SHIFT) | local; }

/* A slot by its (tier, local) index; the caller checked it (valid_slot). */
static inline char *slot_at(Core *c, uint64_t i)
{
    if (__builtin_expect(i >> TIER_SHIFT == 0, 1))
        return c->slots + i * c->slot_size;
    return c->tiers[i >> TIER_SHIFT].slots + (i & LOCAL_MASK) * c->slot_size;
}
/* Whether a slot index names a slot of an attached tier. */
static inline int valid_slot(Core *c, uint64_t i)
{
    uint64_t t = i >> TIER_SHIFT;
    return t < c->ntiers && (i & LOCAL_MASK) < c->tiers[t].nslots;
}
static inline char *slot_key(char *slot)
{ return slot + offsetof(struct shmdict_slot, key); }
static inline char *slot_extra(Core *c, char *slot)
{ return slot_key(slot) + c->key_area; }
static inline uint64_t *word0_of(char *slot)
{ return (uint64_t *)(slot + offsetof(struct shmdict_slot, word0)); }
static inline uint64_t *expires_of(char *slot)
{ return (uint64_t *)(slot + offsetof(struct shmdict_slot, expires)); }
/* Stripe i's record in tier 0: its holder word is the stripe's, for every
 * tier.  (Per-tier live counts: tier->stripes[i].live.) */
static inline struct shmdict_stripe *stripe_at(Core *c, uint64_t i)
{ return &c->stripes[i]; }

/* Tiers published in tier 0's header (clamped: the word is not trusted). */
static inline unsigned published_tiers(Core *c)
{
    uint64_t n = load_acq(&c->header->tiers);
    return n == 0 ? 1 : n > SHMDICT_MAX_TIERS ? SHMDICT_MAX_TIERS : (unsigned)n;
}

/* Which stripe serialises inserts and deletes of a hash. */
static inline uint64_t stripe_of(Core *c, uint64_t h) { return h % c->nstripes; }

/* Where a hash's probe sequence starts: Lemire's multiply-shift reduction,
 * so the slot count need not be a power of two. */
static inline uint64_t home_of(Tier *t, uint64_t h)
{ return (uint64_t)(((u128)h * t->nslots) >> 64); }

/* The slot after i in probe order (the slot array is a ring). */
static inline uint64_t ring_next(Tier *t, uint64_t i) { return i + 1 == t->nslots ? 0 : i + 1; }

/* How many slots past `home` a lookup must probe (bounded by the tier). */
static inline uint64_t reach_limit(Tier *t, uint64_t home)
{
    uint16_t r = __atomic_load_n(&t->reach[home], __ATOMIC_ACQUIRE);
    return (r == SHMDICT_REACH_UNBOUNDED || r >= t->nslots) ? t->nslots - 1 : r;
}

/* Record that a key with this home now sits `distance` slots past it.  The
 * store happens before the key is published (release), so any reader that
 * sees the key also sees a reach that covers it. */
static inline void reach_extend(Tier *t, uint64_t home, uint64_t distance)
{
    uint16_t want = distance >= SHMDICT_REACH_UNBOUNDED ? SHMDICT_REACH_UNBOUNDED : (uint16_t)distance;
    uint16_t cur = __atomic_load_n(&t->reach[home], __ATOMIC_ACQUIRE);
    while (cur < want &&
           !__atomic_compare_exchange_n(&t->reach[home], &cur, want, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ;
}

static void Core_release_view(Core *self);
static void close_semaphores(Core *self);

/* Core(buffer, *, name, ...): see CORE_DOC below for every argument.  All
 * but the buffer are keyword-only and required, so a caller cannot pass
 * them in the wrong order. */
static char *core_kwlist[] = {
    "buffer", "name", "nslots", "slot_size", "key_size", "extra_size", "nstripes",
    "capacity", "stripes_offset", "data_offset", "default_word0", "default_extra",
    "hash_function", "seed", "resolve", "insert", "insert_with", "cache_limit",
    "max_capacity", "grow", "attach_tiers", "expiry_guard", NULL};

static int
Core_init(Core *self, PyObject *args, PyObject *kwds)
{
    PyObject *buffer, *name, *default_extra, *hash_fn, *seed, *resolve_fn, *insert_fn;
    PyObject *insert_with_fn, *grow_fn = Py_None, *attach_fn = Py_None;
    unsigned long long nslots, slot_size, key_size, extra_size, nstripes;
    unsigned long long capacity, stripes_offset, data_offset, max_capacity = 0;
    long long default_word0;
    Py_ssize_t cache_limit;
    /* PyArg_ParseTupleAndKeywords makes keyword-only arguments optional:
     * require each here, naming the first one missing. */
    for (char **kw = core_kwlist + 1; *kw; kw++) {
        PyObject *given = kwds ? PyDict_GetItemString(kwds, *kw) : NULL;
        if (given == NULL && PyTuple_GET_SIZE(args) <= 1) {
            PyErr_Format(PyExc_TypeError,
                         "Core() missing required keyword-only argument: '%s'", *kw);
            return -1;
        }
    }
    int expiry_guard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$UKKKKKKKKLSOOOOOnKOOi", core_kwlist,
            &buffer, &name, &nslots, &slot_size, &key_size, &extra_size, &nstripes,
            &capacity, &stripes_offset, &data_offset, &default_word0, &default_extra,
            &hash_fn, &seed, &resolve_fn, &insert_fn, &insert_with_fn, &cache_limit,
            &max_capacity, &grow_fn, &attach_fn, &expiry_guard))
        return -1;
    if (expiry_guard < 0 || expiry_guard > 2) {
        PyErr_SetString(PyExc_ValueError, "Core(): expiry_guard must be 0, 1 or 2");
        return -1;
    }
    if ((grow_fn != Py_None && !PyCallable_Check(grow_fn))
            || (attach_fn != Py_None && !PyCallable_Check(attach_fn))) {
        PyErr_SetString(PyExc_TypeError, "Core(): grow and attach_tiers must be callable "
                        "or None");
        return -1;
    }
    if (!PyCallable_Check(hash_fn) || !PyCallable_Check(resolve_fn)
            || !PyCallable_Check(insert_fn) || !PyCallable_Check(insert_with_fn)) {
        PyErr_SetString(PyExc_TypeError, "Core(): hash_function, resolve, insert and "
                        "insert_with must be callable");
        return -1;
    }
    if (!PyLong_Check(seed)) {
        PyErr_SetString(PyExc_TypeError, "Core(): seed must be an int");
        return -1;
    }
    if (self->has_view) {
        PyErr_SetString(PyExc_RuntimeError, "Core is already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    self->has_view = 1;

    /* Check the geometry against the format (format.h's one rule) and the
     * mapping, so that no index computed below can ever leave it. */
    uint64_t key_area = shmdict_round_up(key_size, SHMDICT_AREA_ALIGN);
    uint64_t size = (uint64_t)self->view.len;
    struct shmdict_geometry g;
    const char *bad = NULL;
    if (((uintptr_t)self->view.buf & (SHMDICT_DATA_ALIGN - 1)) != 0)
        bad = "mapping is not 64-byte aligned";
    else if (!shmdict_geometry(capacity, key_size, extra_size, nstripes, &g))
        bad = "capacity, key size, value size or stripe count out of range";
    else if (nslots != g.nslots || slot_size != g.slot_size
             || stripes_offset != g.stripes_offset || data_offset != g.data_offset)
        bad = "slot count, slot size or offsets do not follow the format";
    else if (size < g.size)
        bad = "the segment is smaller than its geometry";
    else if ((uint64_t)PyBytes_GET_SIZE(default_extra) != extra_size)
        bad = "default value has the wrong size";
    else if (max_capacity < capacity || max_capacity > (1ull << 40))
        bad = "max_capacity is below capacity or out of range";
    if (bad) {
        /* Give the buffer back: a Core left with has_view set but no base
         * would dereference NULL on its next call. */
        Core_release_view(self);
        CoreState *st = core_state();
        if (st != NULL)
            PyErr_Format(st->CorruptGeometry, "corrupt table geometry: %s", bad);
        return -1;
    }
    self->base = self->view.buf;
    self->nslots = nslots;
    self->slot_size = slot_size;
    self->key_size = key_size;
    self->key_area = key_area;
    self->extra_size = extra_size;
    self->nstripes = nstripes;
    self->capacity = capacity;
    self->stripes_offset = stripes_offset;
    self->data_offset = data_offset;
    self->header = (struct shmdict_header *)self->base;
    self->stripes = (struct shmdict_stripe *)(self->base + stripes_offset);
    self->slots = self->base + data_offset;
    self->reach = (uint16_t *)(self->slots + nslots * slot_size);
    self->max_capacity = max_capacity;
    self->expiry_guard = expiry_guard;
    self->auto_compact = 1;
    self->ntiers = 1;
    Tier *t0 = &self->tiers[0];
    t0->base = self->base;
    t0->header = self->header;
    t0->stripes = self->stripes;
    t0->slots = self->slots;
    t0->reach = self->reach;
    t0->nslots = nslots;
    t0->capacity = capacity;
    t0->has_view = 0;        /* tier 0's mapping is self->view */
    self->default_word0 = default_word0;
    /* XSETREF: __init__ may run again on a closed Core. */
    Py_INCREF(default_extra);
    Py_XSETREF(self->default_extra, default_extra);
    Py_XSETREF(self->name, Py_NewRef(name));
    Py_XSETREF(self->hash_fn, Py_NewRef(hash_fn));
    Py_XSETREF(self->seed, Py_NewRef(seed));
    Py_XSETREF(self->resolve_fn, Py_NewRef(resolve_fn));
    Py_XSETREF(self->insert_fn, Py_NewRef(insert_fn));
    Py_XSETREF(self->insert_with_fn, Py_NewRef(insert_with_fn));
    Py_XSETREF(self->grow_fn, Py_NewRef(grow_fn));
    Py_XSETREF(self->attach_fn, Py_NewRef(attach_fn));
    Py_XSETREF(self->cache, PyDict_New());
    self->cache_limit = cache_limit;
    self->stall_seconds = 2.0;
    self->stripe_poll = 0.1;
    if (self->cache == NULL) {
        Core_release_view(self);
        return -1;
    }
    return 0;
}

static int owner_release(Core *c, uint64_t i, uint64_t s);

static void
Core_release_view(Core *self)
{
    /* First give back the lock words our waiting threads hold: after the
     * view goes they cannot (see HeldWait). */
    if (self->has_view) {
        for (HeldWait *w = self->held_waits; w != NULL; w = w->next) {
            if (!w->released) {
                owner_release(self, w->slot, w->state);
                w->released = 1;
            }
        }
    }
    for (unsigned k = 1; k < SHMDICT_MAX_TIERS; k++) {
        if (self->tiers[k].has_view) {
            PyBuffer_Release(&self->tiers[k].view);
            self->tiers[k].has_view = 0;
        }
    }
    self->ntiers = 1;
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
        self->base = NULL;
    }
}

/* The Core is GC-tracked: its callables refer back to the Table that owns
 * the Core, and a cycle through an untracked object is never collected (a
 * Table dropped without close() would keep its mapping forever). */
static int
Core_traverse(Core *self, visitproc visit, void *arg)
{
    Py_VISIT(self->default_extra);
    Py_VISIT(self->cache);
    Py_VISIT(self->name);
    Py_VISIT(self->hash_fn);
    Py_VISIT(self->seed);
    Py_VISIT(self->resolve_fn);
    Py_VISIT(self->insert_fn);
    Py_VISIT(self->insert_with_fn);
    Py_VISIT(self->grow_fn);
    Py_VISIT(self->attach_fn);
    return 0;
}

static int
Core_clear(Core *self)
{
    Core_release_view(self);        /* every method then says "closed" */
    Py_CLEAR(self->default_extra);
    Py_CLEAR(self->cache);
    Py_CLEAR(self->name);
    Py_CLEAR(self->hash_fn);
    Py_CLEAR(self->seed);
    Py_CLEAR(self->resolve_fn);
    Py_CLEAR(self->insert_fn);
    Py_CLEAR(self->insert_with_fn);
    Py_CLEAR(self->grow_fn);
    Py_CLEAR(self->attach_fn);
    return 0;
}

static void
Core_dealloc(Core *self)
{
    PyObject_GC_UnTrack(self);
    Core_release_view(self);
    close_semaphores(self);
    Py_XDECREF(self->default_extra);
    Py_XDECREF(self->cache);
    Py_XDECREF(self->name);
    Py_XDECREF(self->hash_fn);
    Py_XDECREF(self->seed);
    Py_XDECREF(self->resolve_fn);
    Py_XDECREF(self->insert_fn);
    Py_XDECREF(self->insert_with_fn);
    Py_XDECREF(self->grow_fn);
    Py_XDECREF(self->attach_fn);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define REQUIRE_OPEN(self)                                                   \
    do {                                                                     \
        if (!(self)->has_view) {                                             \
            PyErr_SetString(PyExc_ValueError, "table is closed");           \
            return NULL;                                                     \
        }                                                                    \
        if (!identity_ready())                                               \
            return NULL;                                                     \
    } while (0)

/* After anything that may let another thread run (a wait without the GIL,
 * a signal handler, a call into Python), the table may have been closed and
 * the mapping unmapped: every pointer into it is then dangling.  Returns 1
 * with ValueError set when that happened. */
static int
closed_meanwhile(Core *self)
{
    if (self->has_view)
        return 0;
    PyErr_SetString(PyExc_ValueError, "table was closed while in use");
    return 1;
}

static int
parse_slot(Core *self, unsigned long long slot)
{
    if (!valid_slot(self, slot)) {
        PyErr_SetString(PyExc_IndexError, "slot index out of range");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Expiry (format.h, "Expiry")                                              */
/* ------------------------------------------------------------------------ */

#define EXP_SHIFT       SHMDICT_EXPIRES_SHIFT
#define EXP_GEN_MASK    SHMDICT_EXPIRES_GEN_MASK
#define EXP_UNIT_NS     (1ull << EXP_SHIFT)

static inline uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The deadline, in expiry units, of a key that lives `ns` more
 * nanoseconds: rounded up (never early), and never 0 (never) or 1
 * (reclaiming). */
static inline uint64_t deadline_in(uint64_t ns)
{
    uint64_t d = (monotonic_ns() + ns + EXP_UNIT_NS - 1) >> EXP_SHIFT;
    return d < 2 ? 2 : d;
}

/* The deadline, in expiry units, of an absolute CLOCK_MONOTONIC time. */
static inline uint64_t deadline_at(int64_t ns)
{
    if (ns <= 0)
        return 2;
    uint64_t d = ((uint64_t)ns + EXP_UNIT_NS - 1) >> EXP_SHIFT;
    return d < 2 ? 2 : d;
}

static inline uint64_t expires_word(uint64_t deadline, uint64_t state)
{ return (deadline << EXP_SHIFT) | (st_gen(state) & EXP_GEN_MASK); }

/* Whether a key with this expires word and state is kept alive by a
 * holder (Core's expiry_guard): a held lock never vanishes under its
 * holder; it expires once free. */
static int
expiry_held(Core *c, char *slot)
{
    if (c->expiry_guard == 0)
        return 0;
    if (id_pid(load_acq(word0_of(slot))) != 0)
        return 1;
    if (c->expiry_guard == 2) {
        uint64_t *cells = (uint64_t *)slot_extra(c, slot);
        for (uint64_t k = 0; k < c->extra_size / 8; k++) {
            uint64_t e = load_acq(&cells[k]);
            if (e != 0 && id_alive(e))
                return 1;
        }
    }
    return 0;
}

/* The rare half of slot_expired: the key has a deadline. */
static int
expired_slow(Core *c, char *slot, uint64_t s, uint64_t e)
{
    if ((e & EXP_GEN_MASK) != st_gen(s))
        return 0;       /* another publish's word: the state check decides */
    if ((e >> EXP_SHIFT) > (monotonic_ns() >> EXP_SHIFT))
        return 0;
    return !expiry_held(c, slot);
}

/* Whether the published slot with state `s` holds an expired key.  A key
 * without a deadline costs one load (no clock read). */
static inline int
slot_expired(Core *c, char *slot, uint64_t s)
{
    uint64_t e = load_acq(expires_of(slot));
    if (__builtin_expect((e >> EXP_SHIFT) == 0, 1))
        return 0;
    return expired_slow(c, slot, s, e);
}

/* Note in tier 0's header that some key has had a deadline. */
static inline void
note_expiry_used(Core *c)
{
    if (__atomic_load_n(&c->header->expiry_used, __ATOMIC_RELAXED) == 0)
        __atomic_store_n(&c->header->expiry_used, 1, __ATOMIC_RELEASE);
}

/* Give the key in slot i (looked up with state s) the deadline `deadline`
 * (expiry units; 0: never), lock-free: a CAS of the expires word against
 * a value carrying the slot's generation, so a slot reused by another key
 * meanwhile is left alone.  Returns 1 if set, 0 if the slot no longer
 * holds that key (or a reclaimer has taken it).  No clock read. */
static int
apply_deadline(Core *c, uint64_t i, uint64_t s, uint64_t deadline)
{
    char *slot = slot_at(c, i);
    if (deadline != 0)
        note_expiry_used(c);
    for (int k = 0; k < 1000; k++) {
        uint64_t e = load_acq(expires_of(slot));
        if ((e & EXP_GEN_MASK) != st_gen(s) || load_acq(slot) != s)
            return 0;
        /* A key a reclaimer has taken stays taken.  One whose deadline
         * passed since the caller looked it up (microseconds ago) may be
         * extended: its state is unchanged, and a reclaimer's CAS of the
         * word it read then fails, so it is not tombstoned after this. */
        if ((e >> EXP_SHIFT) == SHMDICT_EXPIRES_RECLAIMING)
            return 0;
        if (cas64(expires_of(slot), &e, expires_word(deadline, s)))
            return load_acq(slot) == s;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Lookup (lock-free)                                                       */
/* ------------------------------------------------------------------------ */

/* Find the published slot of tier `t` holding key[0:klen] with hash h.
 * Returns 1 with the tier-local slot index and its state word filled in,
 * 2 the same when the key has expired (absent for every verb; an insert
 * under the key's stripe reclaims that slot), or 0 when the key is absent
 * from the tier.  The key bytes of a
 * published slot can change only after its state word changes, so a match is
 * confirmed by re-reading the state word after comparing the bytes. */
static int
find_in_tier(Core *c, Tier *t, const char *key, uint64_t klen, uint64_t h,
             uint64_t *slot_out, uint64_t *state_out)
{
    uint64_t high = h >> TAG_SHIFT;
    uint64_t home = home_of(t, h);
    for (int restarts = 0; restarts < 1000; restarts++) {
        /* The reach word lives in another cache line: read it only when the
         * home slot does not settle the lookup (most lookups end there). */
        uint64_t limit = 1;
        uint64_t i = home;
        int changed = 0;
        for (uint64_t probes = 0; probes <= limit; probes++) {
            if (probes == 1) {
                limit = reach_limit(t, home);
                if (limit == 0)
                    break;
            }
            char *slot = t->slots + i * c->slot_size;
            uint64_t s = load_acq(slot);
            unsigned kind = st_kind(s);
            if (kind == KIND_EMPTY)
                return 0;
            if (kind == KIND_PUBLISHED && st_high(s) == high && st_klen(s) == klen
                    && memcmp(slot_key(slot), key, klen) == 0) {
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                if (load_acq(slot) == s) {
                    *slot_out = i;
                    *state_out = s;
                    return slot_expired(c, slot, s) ? 2 : 1;
                }
                changed = 1;    /* the slot changed while we compared */
                break;
            }
            i = ring_next(t, i);
        }
        if (!changed)
            return 0;
        /* Look again from the home slot, with the whole probe budget. */
    }
    return 0;
}

/* Find a key in the attached tiers, in order (a key is in one tier at
 * most: every insert looks in all of them under the key's stripe).
 * Returns 1 with the (tier, local) slot index and its state, 2 the same
 * for an expired key, 0 if absent from every attached tier. */
static int
find_slot(Core *c, const char *key, uint64_t klen, uint64_t h,
          uint64_t *slot_out, uint64_t *state_out)
{
    for (unsigned k = 0; k < c->ntiers; k++) {
        uint64_t local;
        int r = find_in_tier(c, &c->tiers[k], key, klen, h, &local, state_out);
        if (r) {
            *slot_out = slot_index(k, local);
            return r;
        }
    }
    return 0;
}

/* Attach the tiers other processes published since we last looked, through
 * Core(attach_tiers=...), which maps them and calls add_tier().  Returns 1
 * if tiers were added, 0 if none, -1 with an exception set. */
static int closed_meanwhile(Core *self);

static int
refresh_tiers(Core *c)
{
    if (published_tiers(c) <= c->ntiers || c->attach_fn == NULL || c->attach_fn == Py_None
            || c->attaching)
        return 0;       /* (attaching: the callable itself asks us, see tiers()) */
    unsigned before = c->ntiers;
    c->attaching = 1;
    PyObject *r = PyObject_CallNoArgs(c->attach_fn);
    c->attaching = 0;
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    if (closed_meanwhile(c))
        return -1;
    return c->ntiers > before;
}

/* find_slot, and on a miss look at tier 0's published tier count: a
 * process that opened before a growth finds keys that others inserted in
 * tiers it has not mapped yet.  Returns 1, 2 (expired), 0, or -1 with an
 * exception. */
static int
find_any(Core *c, const char *key, uint64_t klen, uint64_t h,
         uint64_t *slot_out, uint64_t *state_out)
{
    int f = find_slot(c, key, klen, h, slot_out, state_out);
    if (f)
        return f;
    unsigned before = c->ntiers;
    int r = refresh_tiers(c);
    if (r <= 0)
        return r;
    for (unsigned k = before; k < c->ntiers; k++) {
        uint64_t local;
        f = find_in_tier(c, &c->tiers[k], key, klen, h, &local, state_out);
        if (f) {
            *slot_out = slot_index(k, local);
            return f;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Admission: the exact live count                                          */
/* ------------------------------------------------------------------------ */

/* The global live count (header.live) decides TableFull, so a key must reserve
 * its place before it claims a slot, and concurrent inserts never overshoot.
 * Each stripe also keeps its own live count, changed only by the stripe's
 * holder, so that after a crash the stripe can be recounted exactly.  The two
 * must change together; a crash between two stores would leave them apart.
 * So both change under this tiny spinlock, whose holder id lets a waiter
 * steal it from a dead holder and recompute the global count from the
 * stripes (which it can, since nobody else changes them meanwhile).
 * Each tier has its own: header.live, the lock and the stripes' counts of
 * tier k count tier k's keys against tier k's capacity. */

/* A live holder keeps the admission lock for a few stores.  One that has
 * kept the same word for longer than the table's stall timeout (Core's
 * stall_seconds, 2 s by default, set with set_stall_timeout) is stopped, or
 * the word is garbage naming some unrelated live process (a corrupted
 * segment): take it over rather than spin forever.
 *
 * A holder that was only stopped (SIGSTOP, a long deschedule) resumes
 * believing it still holds the lock.  So nothing a holder writes depends on
 * still holding it: both counts change by compare-and-swap against the
 * values it read, and the unlock is a CAS of its own id back to 0.  A
 * resumed holder whose CAS fails goes round again; it never writes a count
 * computed from a stale read, and never unlocks another's lock. */
/* The sum of a tier's per-stripe live counts: what the global count must
 * be when nobody is between the two stores of admit_change (the caller
 * holds the admission lock).  Wrapping arithmetic: the words may be
 * garbage. */
static int64_t
admit_sum(Core *c, Tier *t)
{
    uint64_t sum = 0;
    for (uint64_t s = 0; s < c->nstripes; s++)
        sum += load_acq(&t->stripes[s].live);
    return (int64_t)sum;
}

static void
admit_lock(Core *c, Tier *t)
{
    uint64_t me = my_id();
    uint64_t *word = &t->header->admit;
    uint64_t stuck_word = 0;
    double stuck_since = 0;
    for (unsigned long spins = 0;; spins++) {
        uint64_t expected = 0;
        if (cas64(word, &expected, me))
            return;
        if (spins % 1024 == 1023) {
            int stalled = 0;
            if (expected != stuck_word) {
                stuck_word = expected;
                stuck_since = now_monotonic();
            } else if (now_monotonic() - stuck_since > c->stall_seconds) {
                stalled = 1;
            }
            if (stalled || !id_alive(expected) || is_me(expected)) {
                /* The holder died (or is a previous incarnation of our pid
                 * from before a fork): take over and rebuild the sum. */
                if (cas64(word, &expected, me)) {
                    store_rel(&t->header->live, (uint64_t)admit_sum(c, t));
                    return;
                }
            }
            sched_yield();
        }
    }
}

static void
admit_unlock(Core *c, Tier *t)
{
    uint64_t me = my_id();
    cas64(&t->header->admit, &me, 0);    /* not ours any more: leave it */
}

/* Raise CorruptSegment for a tier whose live count is outside
 * 0..capacity even when rebuilt from its stripes' counts. */
static void
raise_garbage_count(Core *c, Tier *t, int64_t count)
{
    CoreState *st = core_state();
    if (st != NULL)
        PyErr_Format(st->CorruptSegment,
                     "table %R: the live count of tier %llu is %lld, outside 0..%llu, "
                     "even recounted from its stripes: the segment was overwritten; "
                     "`shmdict check %U` rebuilds the counts from the slots",
                     c->name, (unsigned long long)(t - c->tiers), (long long)count,
                     (unsigned long long)t->capacity, c->name);
}

/* Add `delta` to a stripe's count and the global count together; with
 * `reserve`, only if the global count stays below capacity.  Returns 1
 * when done, 0 when the tier is full, and -1 with CorruptSegment set when
 * reserving finds a count no process can have written.  Both CASes are
 * against the values read under the lock: if either moved, the lock was
 * taken over while we were stopped, and we start again.
 *
 * A reservation that reads a global count outside 0..capacity reads
 * garbage (reservations keep it at most capacity, and every decrement
 * follows an increment): it rebuilds the count from the stripes once, as
 * a taker of the lock does, and looks again; a count still impossible
 * after that is corruption, never "the table is full". */
static int
admit_change(Core *c, Tier *t, uint64_t stripe, int64_t delta, int reserve)
{
    int64_t *live = &t->header->live;
    int64_t *sl = &t->stripes[stripe].live;
    int recounted = 0;
    for (;;) {
        admit_lock(c, t);
        uint64_t g = load_acq(live), k = load_acq(sl);
        if (reserve && !((int64_t)g >= 0 && g <= t->capacity)) {
            if (recounted) {
                admit_unlock(c, t);
                raise_garbage_count(c, t, (int64_t)g);
                return -1;
            }
            uint64_t e = g;
            cas64(live, &e, (uint64_t)admit_sum(c, t));   /* lost: retry as it is */
            recounted = 1;
            admit_unlock(c, t);
            continue;
        }
        if (reserve && g == t->capacity) {
            admit_unlock(c, t);
            return 0;
        }
        uint64_t e = g;
        if (cas64(live, &e, (uint64_t)((int64_t)g + delta))) {
            e = k;
            if (cas64(sl, &e, (uint64_t)((int64_t)k + delta))) {
                admit_unlock(c, t);
                return 1;
            }
            /* The stripe count moved (only the stripe's holder, which is us,
             * changes it: so a taker's repair): undo ours and retry. */
            __atomic_fetch_sub(live, delta, __ATOMIC_ACQ_REL);
        }
        admit_unlock(c, t);
    }
}

/* Reserve room for one more key in `stripe`: 1, 0 when the table is
 * full, -1 with CorruptSegment set (admit_change). */
static int
admit_reserve(Core *c, Tier *t, uint64_t stripe)
{
    return admit_change(c, t, stripe, 1, 1);
}

/* Add `delta` to a stripe's count and the global count together. */
static void
admit_adjust(Core *c, Tier *t, uint64_t stripe, int64_t delta)
{
    if (delta != 0)
        admit_change(c, t, stripe, delta, 0);
}

/* Set the global count to the sum of the stripes' counts (under the
 * admission lock, which every change of either takes): repairs a garbage
 * global count.  Returns the count it replaced. */
static int64_t
admit_recount(Core *c, Tier *t)
{
    admit_lock(c, t);
    int64_t sum = admit_sum(c, t);
    int64_t old = (int64_t)__atomic_exchange_n(&t->header->live, sum, __ATOMIC_ACQ_REL);
    admit_unlock(c, t);
    return old;
}

/* ------------------------------------------------------------------------ */
/* The stripe journal: the one operation a stripe's holder is in            */
/* ------------------------------------------------------------------------ */

/* format.h, "The stripe journal": the holder of a stripe notes the insert
 * or delete it is doing in the stripe's record, so that a process taking
 * the stripe over from a dead holder settles that one operation
 * (repair_stripe, under "Stripe ownership and repair") instead of walking
 * every slot of every tier.  Plain release stores to the stripe's own cache
 * line, which the holder has just written (its holder word): a few
 * instructions per insert or delete. */
static inline void
journal_begin(Core *c, uint64_t stripe, unsigned op, uint64_t tier,
              uint64_t local, uint64_t state)
{
    struct shmdict_stripe *j = stripe_at(c, stripe);
    store_rel(&j->journal_live, load_acq(&c->tiers[tier].stripes[stripe].live));
    store_rel(&j->journal_state, state);
    store_rel(&j->journal_slot, local);
    store_rel(&j->journal, (uint64_t)op | tier << SHMDICT_JOURNAL_TIER_SHIFT);
}

/* An insert's next candidate slot, noted before the claim is tried. */
static inline void
journal_candidate(Core *c, uint64_t stripe, uint64_t local, uint64_t state)
{
    struct shmdict_stripe *j = stripe_at(c, stripe);
    store_rel(&j->journal_state, state);
    store_rel(&j->journal_slot, local);
}

/* The operation is done: the slot and both counts are settled. */
static inline void
journal_end(Core *c, uint64_t stripe)
{
    store_rel(&stripe_at(c, stripe)->journal, 0);
}

/* ------------------------------------------------------------------------ */
/* Insert and delete (caller holds the key's stripe)                        */
/* ------------------------------------------------------------------------ */

/* Insert a key known to be absent into tier `k`.  Returns RC_OK with the
 * (tier, local) slot and its state filled in, RC_FULL when the tier is
 * full, RC_NO_FREE_SLOT when no free slot was found (only possible in a
 * corrupt table), RC_ERROR with CorruptSegment set when its live count is
 * garbage (admit_change). */
static int
insert_in_tier(Core *c, unsigned k, const char *key, uint64_t klen, uint64_t h,
               int64_t word0, const char *extra, uint64_t deadline,
               uint64_t *slot_out, uint64_t *state_out)
{
    Tier *t = &c->tiers[k];
    uint64_t stripe = stripe_of(c, h);
    /* A full tier (all but the last, in a grown table) is passed over
     * without its admission lock; the reservation below decides. */
    uint64_t live = load_acq(&t->header->live);
    if (live == t->capacity)
        return RC_FULL;
    journal_begin(c, stripe, SHMDICT_JOURNAL_INSERT, k, SHMDICT_JOURNAL_NO_SLOT, 0);
    int admitted = admit_reserve(c, t, stripe);
    if (admitted <= 0) {
        journal_end(c, stripe);
        return admitted < 0 ? RC_ERROR : RC_FULL;
    }
    uint64_t home = home_of(t, h);
    uint64_t i = home;
    for (uint64_t probes = 0; probes < t->nslots; probes++) {
        char *slot = t->slots + i * c->slot_size;
        uint64_t s = load_acq(slot);
        unsigned kind = st_kind(s);
        if (kind == KIND_EMPTY || kind == KIND_TOMBSTONE) {
            uint64_t claimed = st_make(KIND_CLAIMED, st_gen(s), 0, stripe);
            journal_candidate(c, stripe, i, s);
            if (cas64(slot, &s, claimed)) {
                if (kind == KIND_TOMBSTONE)
                    __atomic_fetch_sub(&t->header->tombstones, 1, __ATOMIC_ACQ_REL);
                reach_extend(t, home, probes);   /* before the publish below */
                memcpy(slot_key(slot), key, klen);
                memset(slot_key(slot) + klen, 0, c->key_area - klen);
                if (c->extra_size)
                    memcpy(slot_extra(c, slot), extra, c->extra_size);
                store_rel(word0_of(slot), (uint64_t)word0);
                uint64_t published = st_make(KIND_PUBLISHED, st_gen(s) + 1,
                                             klen, h >> TAG_SHIFT);
                /* The expires word carries the new generation before the
                 * publish: a stale expire() of the slot's last key fails. */
                store_rel(expires_of(slot), expires_word(deadline, published));
                store_rel(slot, published);
                journal_end(c, stripe);
                /* Statistics only (shmdict top's insert rate). */
                __atomic_fetch_add(&c->header->inserts, 1, __ATOMIC_RELAXED);
                *slot_out = slot_index(k, i);
                *state_out = published;
                return RC_OK;
            }
            continue;  /* lost the slot to another stripe's insert: retry it */
        }
        i = ring_next(t, i);
    }
    admit_adjust(c, t, stripe, -1);
    journal_end(c, stripe);
    return RC_NO_FREE_SLOT;
}

/* Insert a key known to be absent (the caller holds its stripe and has
 * looked in every attached tier) into the first attached tier with room.
 * RC_FULL when every attached tier is full. */
static int
insert_slot(Core *c, const char *key, uint64_t klen, uint64_t h,
            int64_t word0, const char *extra, uint64_t deadline,
            uint64_t *slot_out, uint64_t *state_out)
{
    if (deadline != 0)
        note_expiry_used(c);
    for (unsigned k = 0; k < c->ntiers; k++) {
        int rc = insert_in_tier(c, k, key, klen, h, word0, extra, deadline,
                                slot_out, state_out);
        if (rc != RC_FULL)
            return rc;
    }
    return RC_FULL;
}

/* Turn a published slot into a tombstone if (state, word0) still match. */
static int
tombstone_slot(Core *c, uint64_t i, uint64_t state, uint64_t word0)
{
    char *slot = slot_at(c, i);
    uint64_t tomb = st_make(KIND_TOMBSTONE, st_gen(state), 0, 0);
    if (!cas_pair(slot, state, word0, tomb, 0, NULL))
        return 0;
    __atomic_fetch_add(&c->tiers[tier_of(i)].header->tombstones, 1, __ATOMIC_ACQ_REL);
    __atomic_fetch_add(&c->header->deletes, 1, __ATOMIC_RELAXED);   /* statistics */
    /* The stripe is that of the key's hash; the slot's state only keeps the
     * high 32 bits of it, so the caller's stripe index is recomputed by the
     * Python layer and passed through `stripe` in Core_delete. */
    return 1;
}

/* Delete the key in slot i (the caller holds its `stripe`): tombstone it if
 * (state, word0) still match, wake the slot's futex waiters if `wake` (a
 * lock word with waiters: they must see the slot go), and count the key out
 * of its stripe, all under the stripe's journal.  1 if deleted, 0 if the
 * pair had moved (nothing changed). */
static int
delete_slot(Core *c, uint64_t i, uint64_t state, uint64_t word0, uint64_t stripe, int wake)
{
    uint64_t k = tier_of(i);
    journal_begin(c, stripe, SHMDICT_JOURNAL_DELETE, k, i & LOCAL_MASK, state);
    if (!tombstone_slot(c, i, state, word0)) {
        journal_end(c, stripe);
        return 0;
    }
    if (wake)
        futex_wake_all(word0_of(slot_at(c, i)));
    admit_adjust(c, &c->tiers[k], stripe, -1);
    journal_end(c, stripe);
    return 1;
}

/* (slot, state) or, with created >= 0, (slot, state, created): what the
 * lookups return and the key cache keeps.  Built by hand: Py_BuildValue
 * parses its format on every call, a quarter of a new key's insert. */
static PyObject *
slot_tuple(uint64_t i, uint64_t s, int created)
{
    PyObject *t = PyTuple_New(created >= 0 ? 3 : 2);
    if (t == NULL)
        return NULL;
    PyObject *a = PyLong_FromUnsignedLongLong(i), *b = PyLong_FromUnsignedLongLong(s);
    if (a == NULL || b == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_DECREF(t);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    if (created >= 0)
        PyTuple_SET_ITEM(t, 2, Py_NewRef(created ? Py_True : Py_False));
    /* Only ints inside, so never part of a cycle: untracked, the key cache's
     * entries cost the cyclic collector nothing (it would untrack them
     * itself, after traversing each once). */
    PyObject_GC_UnTrack(t);
    return t;
}

/* Whether this thread holds `stripe` (as a verb that inserts or deletes
 * under the caller's stripe requires: it writes the stripe's journal);
 * 0 with RuntimeError set when it does not. */
static int
stripe_held(Core *c, uint64_t stripe)
{
    if (c->stripe_thread != NULL && c->stripe_thread[stripe] == PyThread_get_thread_ident())
        return 1;
    PyErr_Format(PyExc_RuntimeError, "stripe %llu of table %R is not held by this thread",
                 (unsigned long long)stripe, c->name);
    return 0;
}

/* The stripe protocol, further down ("Stripe locks"). */
#define STRIPE_WAIT        0
#define STRIPE_AFTER_WAIT  1
#define STRIPE_LOOK_FIRST  2
#define NO_DEADLINE        0.0

/* An insert's favours to the table (its tombstone sweep, its walk for
 * expired keys when the table is full) take stripes its own key does not
 * need, so they never wait long for one: FAVOUR_WAIT seconds at most for
 * each, after which they leave that stripe for later (a live process holds
 * it: stopped, say, or descheduled; others hold one for microseconds).
 * Otherwise a process stopped holding one stripe would stall inserts into
 * every other stripe too, for as long as it is stopped.  `bounded` 0: the
 * caller asked for the work itself and waits as a delete does. */
#define FAVOUR_WAIT        0.01
static inline double favour_deadline(int bounded)
{
    return bounded ? now_monotonic() + FAVOUR_WAIT : NO_DEADLINE;
}
static int stripe_acquire(Core *c, uint64_t stripe, int how, double deadline,
                          long long *dropped, long long *delta);
static int stripe_release(Core *c, uint64_t stripe);
static void raise_table_full(Core *c);
static int rw_delete_claim(Core *c, uint64_t i, uint64_t s, uint64_t v, int64_t *busy);
static int hash_key(Core *c, const char *encoded, Py_ssize_t n, unsigned long long *h);
static inline int read_pair(char *slot, uint64_t state, int64_t *value);

/* Reclaim the expired key in slot i (state s) of `stripe`, which the
 * caller holds: mark its expires word RECLAIMING (by CAS, so an expire()
 * that extended it meanwhile wins, and one that comes after sees it
 * expired), then tombstone it and adjust the counts as a delete does (the
 * value goes with it).  A SIGKILL between the two leaves a marked key,
 * expired for every verb, that the next reclaimer takes.  A lock key taken
 * meanwhile stays, marked: it expires once free.  Returns 1 if reclaimed. */
static int
reclaim_slot(Core *c, uint64_t i, uint64_t s, uint64_t stripe)
{
    char *slot = slot_at(c, i);
    uint64_t e = load_acq(expires_of(slot));
    if (load_acq(slot) != s || (e >> EXP_SHIFT) == 0 || !expired_slow(c, slot, s, e))
        return 0;
    if (!cas64(expires_of(slot), &e, expires_word(SHMDICT_EXPIRES_RECLAIMING, s)))
        return 0;
    for (int spins = 0; spins < 1000000; spins++) {
        int64_t v;
        if (!read_pair(slot, s, &v))
            return 0;
        uint64_t w = (uint64_t)v;
        if (c->expiry_guard != 0 && id_pid(w) != 0)
            return 0;
        if (c->expiry_guard == 2) {
            /* An rw lock: take the writer word, then refuse if a live
             * reader is inside (as a delete does). */
            int64_t busy = 0;
            int r = rw_delete_claim(c, i, s, w, &busy);
            if (r == RC_STALE)
                continue;
            if (r == RC_BUSY)
                return 0;
            w = (w & WAITERS_BIT) | my_id();
            for (int k = 0; k < 1000000; k++) {
                if (delete_slot(c, i, s, w, stripe, (w & WAITERS_BIT) != 0))
                    return 1;
                if (load_acq(slot) != s)
                    return 0;
                w = load_acq(word0_of(slot));
            }
            return 0;
        }
        if (delete_slot(c, i, s, w, stripe, c->expiry_guard != 0 && (w & WAITERS_BIT)))
            return 1;
    }
    return 0;
}

/* Reclaim every expired key of the table, each under its stripe (taken
 * here, one at a time: the caller holds none).  What an insert that found
 * every tier full does before growing or raising TableFull, and what
 * reclaim_expired() (the rate limiters' sweep) does.  Returns the number
 * reclaimed, -1 with an exception set. */
/* With `throttle` (an insert into a full table), a walk that reclaimed
 * nothing is not repeated by this process before the earliest deadline it
 * saw, nor within 50 ms: a table full of live keys must not make every new
 * key's insert a walk of the whole table.  (A key another process gives an
 * earlier deadline meanwhile is reclaimed by the next walk, its own next
 * insert, or another process; at worst an insert meanwhile says TableFull.) */
#define RECLAIM_BACKOFF_NS  50000000ull
/* The throttled walk is a favour (see FAVOUR_WAIT): a stripe it could not
 * take in time keeps its expired keys for a later walk, and after
 * RECLAIM_SKIPS such stripes the walk stops. */
#define RECLAIM_SKIPS  8

static long long
reclaim_expired_walk(Core *c, int throttle)
{
    if (load_acq(&c->header->expiry_used) == 0)
        return 0;
    uint64_t now_u = monotonic_ns() >> EXP_SHIFT;
    if (throttle && now_u < c->reclaim_after)
        return 0;
    uint64_t next = now_u + (RECLAIM_BACKOFF_NS >> EXP_SHIFT);
    long long n = 0;
    uint64_t skipped[RECLAIM_SKIPS];
    unsigned nskipped = 0;
    for (unsigned k = 0; k < c->ntiers && nskipped < RECLAIM_SKIPS; k++) {
        for (uint64_t local = 0; local < c->tiers[k].nslots; local++) {
            Tier *t = &c->tiers[k];
            char *slot = t->slots + local * c->slot_size;
            uint64_t s = load_acq(slot);
            if (st_kind(s) != KIND_PUBLISHED || st_klen(s) > c->key_size)
                continue;
            if (!slot_expired(c, slot, s)) {
                uint64_t d = load_acq(expires_of(slot)) >> EXP_SHIFT;
                if (d > now_u && d < next)
                    next = d;       /* the earliest a live key can expire */
                continue;
            }
            unsigned long long h;
            if (hash_key(c, slot_key(slot), (Py_ssize_t)st_klen(s), &h) < 0)
                return -1;
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (load_acq(slot) != s || (h >> TAG_SHIFT) != st_high(s))
                continue;           /* changed while we hashed it */
            uint64_t stripe = stripe_of(c, h);
            int passed_over = 0;
            for (unsigned j = 0; j < nskipped; j++)
                passed_over |= skipped[j] == stripe;
            if (passed_over)
                continue;
            long long dropped, delta;
            int r = stripe_acquire(c, stripe, STRIPE_WAIT, favour_deadline(throttle),
                                   &dropped, &delta);
            if (r == RC_ERROR)
                return -1;
            if (r == RC_TIMEOUT) {
                skipped[nskipped++] = stripe;
                if (nskipped == RECLAIM_SKIPS)
                    break;
                continue;
            }
            if (r == RC_RECOVERED)
                c->takeovers++;
            n += reclaim_slot(c, slot_index(k, local), s, stripe);
            stripe_release(c, stripe);
            if (closed_meanwhile(c))
                return -1;
        }
    }
    c->reclaim_after = n == 0 ? next : 0;
    return n;
}

static inline long long reclaim_expired(Core *c) { return reclaim_expired_walk(c, 1); }


/* Insert key[0:klen] (hash h) if absent, taking its stripe here: (slot,
 * state, created), or NULL with an exception set.  Between the stripe's
 * acquire and release only C runs (no Python code, so no signal handler,
 * and the GIL is kept unless the stripe is taken and we must wait): a
 * SIGKILL anywhere in between is repaired by the next waiter as for any
 * holder.  Python is called, with the stripe released, only to attach tiers
 * another process published, or when every tier is full: Core(grow=...)
 * then repairs dead stripes, adds a tier, or raises TableFull. */
static int compact_if_due(Core *c);

static int
insert_new_slot(Core *c, const char *key, uint64_t klen, uint64_t h, int64_t word0,
                const char *extra, uint64_t deadline,
                uint64_t *slot_out, uint64_t *state_out, int *created)
{
    uint64_t stripe = stripe_of(c, h);
    /* Tombstones first, holding nothing yet (see "Compaction"). */
    if (compact_if_due(c) < 0)
        return -1;
    for (int attempt = 0; attempt < 4 * (int)SHMDICT_MAX_TIERS; attempt++) {
        long long dropped, delta;
        unsigned seen = c->ntiers;
        int r = stripe_acquire(c, stripe, STRIPE_WAIT, NO_DEADLINE, &dropped, &delta);
        if (r == RC_ERROR)
            return -1;
        if (r == RC_RECOVERED)
            c->takeovers++;
        uint64_t i = 0, s = 0;
        int rc, f = 0;
        if (published_tiers(c) > c->ntiers)
            rc = RC_STALE;          /* attach the new tiers first, unlocked */
        else if ((f = find_slot(c, key, klen, h, &i, &s)) == 1)
            rc = RC_FOUND;
        else if (f == 2 && !reclaim_slot(c, i, s, stripe))
            rc = RC_BUSY;           /* extended or taken meanwhile: look again */
        else                        /* absent, or its expired slot reclaimed */
            rc = insert_slot(c, key, klen, h, word0, extra, deadline, &i, &s);
        stripe_release(c, stripe);
        if (rc == RC_ERROR)
            return -1;
        if (rc == RC_FOUND || rc == RC_OK) {
            *slot_out = i;
            *state_out = s;
            *created = rc == RC_OK;
            return 0;
        }
        if (rc == RC_NO_FREE_SLOT) {
            CoreState *st = core_state();
            if (st != NULL)
                PyErr_Format(st->CorruptSegment,
                             "table %R: no free slot although the live count is below "
                             "capacity (corrupt table: run `shmdict check %U`)",
                             c->name, c->name);
            return -1;
        }
        if (rc == RC_STALE) {
            if (refresh_tiers(c) < 0)
                return -1;
            continue;
        }
        if (rc == RC_BUSY)
            continue;
        /* RC_FULL: every attached tier is full.  Expired keys hold room
         * that is free: reclaim it before growing or giving up. */
        long long reclaimed = reclaim_expired(c);
        if (reclaimed < 0)
            return -1;
        if (reclaimed > 0)
            continue;
        if (c->grow_fn == NULL || c->grow_fn == Py_None) {
            raise_table_full(c);
            return -1;
        }
        PyObject *g = PyObject_CallFunction(c->grow_fn, "I", seen);
        if (g == NULL)
            return -1;
        Py_DECREF(g);
        if (closed_meanwhile(c))
            return -1;
    }
    raise_table_full(c);
    return -1;
}

/* insert_new_slot, as the (slot, state, created) tuple Core.insert_new gives. */
static PyObject *
insert_new(Core *c, const char *key, uint64_t klen, uint64_t h,
           int64_t word0, const char *extra)
{
    uint64_t i, s;
    int created;
    if (insert_new_slot(c, key, klen, h, word0, extra, 0, &i, &s, &created) < 0)
        return NULL;
    return slot_tuple(i, s, created);
}

/* ------------------------------------------------------------------------ */
/* Compaction: tombstones back to empty slots                               */
/* ------------------------------------------------------------------------ */

/* Lookups stop at an empty slot, so a deleted slot stays a tombstone for as
 * long as a key's probe path runs over it: while some key sits after it with
 * its home at or before it.  Under churn the empty slots run out (none left
 * after 200x capacity of churn) and every miss walks to its reach.  A
 * tombstone that no key's path crosses can be empty again: a lookup that
 * gets there is for a key that is not there.
 *
 * Which paths cross a slot only stays put while no insert runs, so a sweep
 * holds every stripe, one window at a time: reads and value updates of
 * existing keys go on lock-free, inserts and deletes wait for one window at
 * most.  A window is a run of whole clusters, from the slot after an empty
 * one to the next empty one.  No key's path crosses an empty slot (the
 * invariant lookups rely on), so every key of a window has its home in it
 * (or, by the rounding below, in the empty slot before it) and a window is
 * decided alone, in one backward pass: `cover` counts the slots before the
 * current one that the path of some later key still crosses.  The pass also
 * works out what reach each home of the window needs now, and lowers reach
 * to that (before, reach only ever grew).
 *
 * A key's home is read off its state word's tag, the hash's high 32 bits:
 * it is home_of(tag << 32) or the slot after it, as the low bits decide;
 * both are assumed, so no key is ever under-covered (nslots < 2^32).
 *
 * A tier with no empty slot at all (the end state of churn without sweeps)
 * has no window boundary: it is swept whole, as a ring, in two passes (the
 * first only brings `cover` round), after which it has windows.
 *
 * Sweeps start by themselves: an insert that finds the table has seen
 * nslots/8 deletes (at least 8) since a tier's last sweep finished
 * (header.compact_mark), or a sweep of it in progress (compact_left),
 * first
 * sweeps COMPACT_BUDGET slots of it from where that sweep stands
 * (compact_next).  That happens before the insert takes its own stripe, so
 * an exception from a signal handler during a wait leaves nothing half
 * done.  An insert's sweep is a favour (see FAVOUR_WAIT): when a live
 * process holds a stripe past FAVOUR_WAIT, the sweep stops where it stands
 * (its progress is in the header) and this process's inserts leave
 * sweeping alone for COMPACT_BACKOFF.  The three header words are hints:
 * garbage in them costs sweeps, never a key, since every decision is made
 * from the slots under every stripe.
 *
 * A sweeper stopped past the stall timeout while holding a stripe it took
 * over (its holder word then has the takeover bit) can lose that stripe to a
 * waiter.  So it converts only after checking that it still holds them all,
 * and each conversion is a CAS from the exact tombstone word it judged: an
 * insert after the check that would cross the slot finds it free, claims it,
 * and the CAS fails. */

#define COMPACT_WINDOW  4096u     /* a window covers at least this many slots
                                     (then on to the next empty one)        */
#define COMPACT_BUDGET  16384u    /* slots an insert's sweep step covers
                                     (four windows, ~0.2 ms)               */
#define COMPACT_BACKOFF 0.5       /* seconds this process's inserts do not
                                     sweep after one gave up               */

/* Deletes since a tier's last sweep that start the next one. */
static inline uint64_t compact_trigger(Tier *t)
{
    uint64_t q = t->nslots / 8;
    return q < 8 ? 8 : q;
}

/* Whether an insert should sweep tier t first: a sweep of it is in
 * progress, or the table saw compact_trigger() deletes since the last one
 * finished (the deletes count is tier 0's, for all tiers: a tier may be
 * swept early, never late).  Nothing to do with fewer than 8 tombstones. */
static inline int
compact_due(Core *c, Tier *t)
{
    if ((int64_t)load_acq(&t->header->tombstones) < 8)
        return 0;
    if (load_acq(&t->header->compact_left) != 0)
        return 1;
    /* Unsigned: a garbage mark ahead of the count wraps, and so sweeps. */
    return load_acq(&c->header->deletes) - load_acq(&t->header->compact_mark)
           >= compact_trigger(t);
}

/* Take every stripe, in index order: two sweepers never deadlock, and
 * nothing else holds one stripe while it waits for another.  `deadline`:
 * the monotonic time after which a stripe that a live process holds is
 * given up (NO_DEADLINE: wait as long as it holds).  RC_OK; RC_TIMEOUT with none held
 * and *blocked the stripe given up; RC_ERROR with an exception set and none
 * held. */
static int
take_all_stripes(Core *c, double deadline, uint64_t *blocked)
{
    int how = STRIPE_WAIT;
    for (uint64_t s = 0; s < c->nstripes; s++) {
        long long dropped, delta;
        int r = stripe_acquire(c, s, how, deadline, &dropped, &delta);
        if (r == RC_ERROR || r == RC_TIMEOUT) {
            if (r == RC_TIMEOUT && blocked != NULL)
                *blocked = s;
            while (s-- > 0)
                stripe_release(c, s);
            return r;
        }
        if (r == RC_RECOVERED) {
            c->takeovers++;
            how = STRIPE_LOOK_FIRST;    /* the others may be the dead one's too */
        }
    }
    return RC_OK;
}

static void
release_all_stripes(Core *c)
{
    for (uint64_t s = c->nstripes; s-- > 0;)
        stripe_release(c, s);
}

/* Whether this process still holds every stripe (a sweeper stopped past
 * the stall timeout may have been taken over). */
static int
holds_all_stripes(Core *c)
{
    uint64_t me = my_id();
    for (uint64_t s = 0; s < c->nstripes; s++)
        if ((load_acq(&stripe_at(c, s)->holder) & ~SHMDICT_TAKEOVER_BIT) != me)
            return 0;
    return 1;
}

/* The slot a key's path starts from, at the earliest (see above), and
 * whether the slot after it may be its home instead. */
static inline uint64_t
home_low(Tier *t, uint64_t state, int *maybe_next)
{
    uint64_t tag = st_high(state);
    uint64_t low = home_of(t, tag << TAG_SHIFT);
    *maybe_next = home_of(t, (tag << TAG_SHIFT) | ((1ull << TAG_SHIFT) - 1)) != low;
    return low;
}

/* A tombstone a window found no path across, to be made empty. */
typedef struct { uint64_t local, state; } free_slot;

/* Sweep `len` slots of tier t from `a`: a window (slot a-1 and slot a+len
 * are empty) or, with `ring`, the whole tier (a == 0, len == nslots).  The
 * caller holds every stripe.  Returns the tombstones made empty, -1 with
 * MemoryError set. */
static long long
compact_window(Core *c, Tier *t, uint64_t a, uint64_t len, int ring)
{
    uint64_t n = t->nslots;
    free_slot *found = PyMem_Malloc((len ? len : 1) * sizeof(free_slot));
    uint16_t *need = ring ? NULL : PyMem_Calloc(len ? len : 1, sizeof(uint16_t));
    if (found == NULL || (!ring && need == NULL)) {
        PyMem_Free(found);
        PyMem_Free(need);
        PyErr_NoMemory();
        return -1;
    }
    uint64_t nfound = 0;
    int reach_ok = !ring;       /* lower reach only from an exact window */
    uint64_t cover = 0;         /* slots before this one a later path crosses */
    for (int pass = ring ? 0 : 1; pass < 2; pass++) {
        uint64_t i = (a + len - 1) % n;
        for (uint64_t off = len; off-- > 0; i = i == 0 ? n - 1 : i - 1) {
            uint64_t s = load_acq(t->slots + i * c->slot_size);
            unsigned kind = st_kind(s);
            int crossed = cover > 0;
            if (cover > 0)
                cover--;
            if (kind == KIND_TOMBSTONE) {
                if (!crossed && pass == 1)
                    found[nfound++] = (free_slot){i, s};
                continue;
            }
            if (kind == KIND_EMPTY)
                continue;
            if (kind != KIND_PUBLISHED) {
                /* Claimed under a stripe we hold (its holder died, and the
                 * takeover left it) or garbage: its key is unknown, so let
                 * it cover everything before it. */
                cover = n;
                reach_ok = 0;
                continue;
            }
            int maybe_next;
            uint64_t home = home_low(t, s, &maybe_next);
            uint64_t d = (i + n - home) % n;      /* slots its path crosses */
            if (d > cover)
                cover = d;
            if (!reach_ok)
                continue;
            if (d > off) {
                /* Its earliest home is the empty slot before the window: its
                 * home is then the window's first slot, or the table is
                 * inconsistent (check() says so) and reach stays. */
                if (d == off + 1 && maybe_next) {
                    if (need[0] < off)
                        need[0] = off >= SHMDICT_REACH_UNBOUNDED ? SHMDICT_REACH_UNBOUNDED
                                                                 : (uint16_t)off;
                } else {
                    reach_ok = 0;
                }
                continue;
            }
            uint16_t want = d >= SHMDICT_REACH_UNBOUNDED ? SHMDICT_REACH_UNBOUNDED : (uint16_t)d;
            if (need[off - d] < want)
                need[off - d] = want;
            if (maybe_next && d >= 1 && need[off - d + 1] < want - 1)
                need[off - d + 1] = want - 1;
        }
    }
    long long made = 0;
    if (holds_all_stripes(c)) {
        for (uint64_t k = 0; k < nfound; k++) {
            uint64_t tomb = found[k].state;
            if (cas64(t->slots + found[k].local * c->slot_size, &tomb,
                      st_make(KIND_EMPTY, st_gen(found[k].state), 0, 0))) {
                __atomic_fetch_sub(&t->header->tombstones, 1, __ATOMIC_ACQ_REL);
                made++;
            }
        }
        if (reach_ok) {
            uint64_t i = a;
            for (uint64_t off = 0; off < len; off++, i = ring_next(t, i))
                if (need[off] < __atomic_load_n(&t->reach[i], __ATOMIC_ACQUIRE))
                    __atomic_store_n(&t->reach[i], need[off], __ATOMIC_RELEASE);
        }
    }
    PyMem_Free(found);
    PyMem_Free(need);
    return made;
}

/* The first empty slot of tier t at or after slot i, or nslots if none. */
static uint64_t
next_empty(Core *c, Tier *t, uint64_t i)
{
    for (uint64_t steps = 0; steps < t->nslots; steps++, i = ring_next(t, i))
        if (st_kind(load_acq(t->slots + i * c->slot_size)) == KIND_EMPTY)
            return i;
    return t->nslots;
}

/* Take every stripe for a sweep (`bounded`: an insert's, see FAVOUR_WAIT).
 * RC_OK; RC_TIMEOUT (none held), after which this process's inserts do not
 * sweep for COMPACT_BACKOFF; RC_ERROR (an exception set, none held). */
static int
take_all_for_sweep(Core *c, int bounded)
{
    int r = take_all_stripes(c, favour_deadline(bounded), NULL);
    if (r == RC_TIMEOUT)
        c->compact_not_before = now_monotonic() + COMPACT_BACKOFF;
    return r;
}

/* Sweep tier k: go on with the sweep in progress (or start one) for about
 * `budget` slots, or with budget 0 sweep it whole, from a fresh start.
 * Holds every stripe for a window at a time and lets the others in between.
 * `bounded`: an insert's sweep, which stops where it stands when it cannot
 * take the stripes in time (take_all_for_sweep).  Returns the tombstones
 * made empty, -1 with an exception set. */
static long long
compact_tier(Core *c, unsigned k, uint64_t budget, int bounded)
{
    Tier *t = &c->tiers[k];
    struct shmdict_header *hd = t->header;
    uint64_t n = t->nslots;
    long long made = 0;
    int took = take_all_for_sweep(c, bounded);
    if (took != RC_OK)
        return took == RC_TIMEOUT ? 0 : -1;
    uint64_t left = load_acq(&hd->compact_left);
    if (budget == 0 || left == 0 || left > n)
        left = n;                       /* a new sweep */
    for (uint64_t covered = 0; left > 0 && (budget == 0 || covered < budget);) {
        if (covered > 0) {
            release_all_stripes(c);     /* let inserts and deletes in */
            took = take_all_for_sweep(c, bounded);
            if (took != RC_OK)          /* the header keeps where it stands */
                return took == RC_TIMEOUT ? made : -1;
        }
        /* A window starts right after an empty slot: the one the last
         * window ended at, unless an insert took it meanwhile. */
        uint64_t from = load_acq(&hd->compact_next) % n;
        uint64_t anchor = next_empty(c, t, from);
        long long r;
        if (anchor == n) {
            /* Not one empty slot: the whole tier, as a ring; if that freed
             * any, sweep it again in windows (which lowers reach). */
            r = compact_window(c, t, 0, n, 1);
            covered += n;
            left = r > 0 ? n : 0;
            store_rel(&hd->compact_next, 0);
        } else {
            uint64_t skipped = (anchor + n - from) % n;
            uint64_t least = left < COMPACT_WINDOW ? left : COMPACT_WINDOW;
            uint64_t a = ring_next(t, anchor), len = 0, i = a;
            /* Whole clusters: on to an empty slot once the window is long
             * enough (the anchor is one, at the latest). */
            while (len < n - 1
                   && !(len >= least && st_kind(load_acq(t->slots + i * c->slot_size)) == KIND_EMPTY)) {
                len++;
                i = ring_next(t, i);
            }
            r = compact_window(c, t, a, len, 0);
            uint64_t swept = skipped + 1 + len;
            covered += swept;
            left = swept >= left ? 0 : left - swept;
            store_rel(&hd->compact_next, i);    /* the empty slot it ended at */
        }
        if (r < 0) {
            release_all_stripes(c);
            return -1;
        }
        made += r;
        store_rel(&hd->compact_left, left);
    }
    if (left == 0)
        store_rel(&hd->compact_mark, load_acq(&c->header->deletes));
    release_all_stripes(c);
    return made;
}

/* Before an insert: sweep the tiers that are due (see above). */
static int
compact_if_due(Core *c)
{
    if (!c->auto_compact || c->sems == NULL)
        return 0;
    for (unsigned k = 0; k < c->ntiers; k++) {
        if (!compact_due(c, &c->tiers[k]))
            continue;
        if (now_monotonic() < c->compact_not_before)
            return 0;                   /* a sweep gave up a moment ago */
        if (compact_tier(c, k, COMPACT_BUDGET, 1) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Key resolution for the fast path                                         */
/* ------------------------------------------------------------------------ */

/* Keys that may be looked up in the per-process cache: exact str, bytes,
 * int (bool included) and tuples of those.  Anything else (float, a str
 * subclass with its own __eq__, ...) goes through the Python resolve callable, which encodes
 * it canonically or raises TypeError: a dict lookup would wrongly find 1 for
 * 1.0. */
static int
cacheable_key(PyObject *key, int depth)
{
    if (PyUnicode_CheckExact(key) || PyBytes_CheckExact(key)
            || PyLong_CheckExact(key) || PyBool_Check(key))
        return 1;
    if (PyTuple_CheckExact(key) && depth < 8) {
        Py_ssize_t n = PyTuple_GET_SIZE(key);
        for (Py_ssize_t k = 0; k < n; k++)
            if (!cacheable_key(PyTuple_GET_ITEM(key, k), depth + 1))
                return 0;
        return 1;
    }
    return 0;
}

/* The canonical key encoding of shmdict/keys.py, for the common keys: exact
 * str, bytes, int within int64, and tuples of those.  Writes at most `cap`
 * bytes to `out` and returns the length, or -1 when the key must go through
 * the Python encoder instead: another type, a bigger int, a lone surrogate,
 * too long or too deep.  That encoder then raises the right error, or
 * handles the rare case; the two agree byte for byte (tests/test_keys.py). */
static Py_ssize_t
encode_key_c(PyObject *key, char *out, Py_ssize_t cap, int depth)
{
    if (PyUnicode_CheckExact(key)) {               /* 0x02 + UTF-8 */
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(key, &n);
        if (utf8 == NULL) {
            PyErr_Clear();
            return -1;
        }
        if (n + 1 > cap)
            return -1;
        out[0] = 2;
        memcpy(out + 1, utf8, (size_t)n);
        return n + 1;
    }
    if (PyBytes_CheckExact(key)) {                 /* 0x01 + the bytes */
        Py_ssize_t n = PyBytes_GET_SIZE(key);
        if (n + 1 > cap)
            return -1;
        out[0] = 1;
        memcpy(out + 1, PyBytes_AS_STRING(key), (size_t)n);
        return n + 1;
    }
    if (PyLong_CheckExact(key) || PyBool_Check(key)) {
        /* 0x03 + minimal big-endian two's complement: as many bytes as
         * (n + (n < 0)).bit_length() // 8 + 1 in Python. */
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(key, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;
        }
        unsigned long long magnitude = v < 0 ? ~(unsigned long long)v : (unsigned long long)v;
        int bits = magnitude ? 64 - __builtin_clzll(magnitude) : 0;
        int len = bits / 8 + 1;
        if (len + 1 > cap)
            return -1;
        out[0] = 3;
        for (int k = 0; k < len; k++)
            out[1 + k] = (char)(((unsigned long long)v >> (8 * (len - 1 - k))) & 0xff);
        return len + 1;
    }
    if (PyTuple_CheckExact(key) && depth <= 32) {
        /* 0x04 + per element: varint(length) + encoding.  Lengths are below
         * 2^14 (key_size <= 4095), so a varint takes one or two bytes: the
         * element is written two bytes on, then moved back if one sufficed. */
        Py_ssize_t pos = 1;
        if (cap < 1)
            return -1;
        out[0] = 4;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(key); k++) {
            if (pos + 2 > cap)
                return -1;
            Py_ssize_t n = encode_key_c(PyTuple_GET_ITEM(key, k), out + pos + 2,
                                        cap - pos - 2, depth + 1);
            if (n < 0)
                return -1;
            if (n < 128) {
                out[pos] = (char)n;
                memmove(out + pos + 1, out + pos + 2, (size_t)n);
                pos += 1 + n;
            } else {
                out[pos] = (char)((n & 0x7f) | 0x80);
                out[pos + 1] = (char)(n >> 7);
                pos += 2 + n;
            }
        }
        return pos;
    }
    return -1;
}

/* encode_key(key, cap) -> bytes | None: the C encoder, for tests. */
static PyObject *
mod_encode_key(PyObject *m, PyObject *args)
{
    PyObject *key;
    Py_ssize_t cap;
    char buf[KLEN_MASK + 1];
    if (!PyArg_ParseTuple(args, "On", &key, &cap))
        return NULL;
    if (cap < 0 || cap > KLEN_MASK)
        cap = KLEN_MASK;
    Py_ssize_t n = encode_key_c(key, buf, cap, 0);
    if (n < 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(buf, n);
}

/* The key hash: Core(hash_function=...), xxhash's own xxh3_64, called on
 * the encoded key with the table's seed.  Returns -1 with an exception
 * set, also when the table was closed during the call. */
static int
hash_key(Core *c, const char *encoded, Py_ssize_t n, unsigned long long *h)
{
    PyObject *kb = PyBytes_FromStringAndSize(encoded, n);
    if (kb == NULL)
        return -1;
    PyObject *argv[2] = {kb, c->seed};
    PyObject *hv = PyObject_Vectorcall(c->hash_fn, argv, 2, NULL);
    Py_DECREF(kb);
    *h = hv ? PyLong_AsUnsignedLongLong(hv) : (unsigned long long)-1;
    Py_XDECREF(hv);
    if ((*h == (unsigned long long)-1 && PyErr_Occurred()) || closed_meanwhile(c))
        return -1;
    return 0;
}

/* The resolve callable's work done in C, for keys encode_key_c takes:
 * encode, hash (xxhash's own function, with the table's seed), probe every
 * tier, and for a new key insert it, taking its stripe in C (insert_new_slot).
 * Returns 1 with slot and state, 0 (absent, not created), or -1 with an
 * exception; sets *handled to 0 when the key needs the Python resolve
 * callable. */
/* What a verb that may create its key wants the new key to hold: `word0`
 * (the Counter value a new key is created with: add's amount, set's value),
 * and whether this call created the key (`created`, set by the resolve).
 * Without one (NULL), a new key holds the layout's default word0. */
struct first_value {
    int64_t word0;
    int created;
};

static int
resolve_in_c(Core *c, PyObject *key, int create, uint64_t deadline, struct first_value *first,
             int *handled, uint64_t *slot, uint64_t *state)
{
    char buf[KLEN_MASK + 1];
    *handled = 0;
    Py_ssize_t n = encode_key_c(key, buf, (Py_ssize_t)c->key_size, 0);
    if (n < 0)
        return 0;
    *handled = 1;
    unsigned long long h;
    if (hash_key(c, buf, n, &h) < 0)
        return -1;
    int found = find_any(c, buf, (uint64_t)n, h, slot, state);
    if (found == 1 || found < 0)
        return found;
    if (!create)
        return 0;                   /* absent, or expired: absent */
    if (c->sems == NULL) {      /* no stripe semaphores here: Python inserts */
        PyObject *res = PyObject_CallFunction(c->insert_fn, "y#K", buf, n, h);
        if (res == NULL)
            return -1;
        int ok = PyTuple_Check(res) && PyTuple_GET_SIZE(res) >= 2;
        if (ok) {
            *slot = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(res, 0));
            *state = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(res, 1));
        }
        Py_DECREF(res);
        if (!ok) {
            PyErr_SetString(PyExc_TypeError, "insert must return (slot, state, created)");
            return -1;
        }
        return PyErr_Occurred() ? -1 : 1;
    }
    /* The insert, in C: the stripe taken and released there (Python runs
     * only to grow the table or repair a dead holder's stripe). */
    PyObject *extra = Py_NewRef(c->default_extra);
    int created;
    int r = insert_new_slot(c, buf, (uint64_t)n, h, first ? first->word0 : c->default_word0,
                            PyBytes_AS_STRING(extra), deadline, slot, state, &created);
    Py_DECREF(extra);
    if (first != NULL)
        first->created = r == 0 && created;
    return r < 0 ? -1 : 1;
}

/* The key cache's entries: the 16 bytes of {slot, state}.  A bytes object,
 * not a tuple of ints: it costs the cyclic collector nothing and is read
 * with one copy (a state word, and a slot beyond tier 0, are ints of more
 * than one digit, which CPython converts slowly). */
typedef struct { uint64_t slot, state; } cache_entry;

/* Look a key up: from the cache when its entry is still current, else
 * in C (resolve_in_c) or through the Python resolve callable (which
 * encodes, hashes, probes and, when `create`, inserts under the stripe
 * lock).  Returns 1 and fills slot/state, 0 when absent (create false), -1
 * with an exception set. */
static int
resolve_ttl(Core *c, PyObject *key, int create, int use_cache, uint64_t deadline,
            struct first_value *first, uint64_t *slot, uint64_t *state)
{
    if (closed_meanwhile(c))
        return -1;
    int cacheable = cacheable_key(key, 0);
    if (use_cache && cacheable) {
        PyObject *hit = PyDict_GetItemWithError(c->cache, key);
        if (hit != NULL && PyBytes_CheckExact(hit)
                && PyBytes_GET_SIZE(hit) == (Py_ssize_t)sizeof(cache_entry)) {
            cache_entry e;
            memcpy(&e, PyBytes_AS_STRING(hit), sizeof e);
            if (valid_slot(c, e.slot) && load_acq(slot_at(c, e.slot)) == e.state
                    && !slot_expired(c, slot_at(c, e.slot), e.state)) {
                *slot = e.slot;
                *state = e.state;
                return 1;
            }
        } else if (hit == NULL && PyErr_Occurred()) {
            return -1;
        }
    }
    /* Common keys are resolved in C; others by the Python resolve callable,
     * which gives (slot, state, ...) or None. */
    int handled = 0, r = 0;
    if (cacheable)
        r = resolve_in_c(c, key, create, deadline, first, &handled, slot, state);
    if (!handled) {
        PyObject *res = PyObject_CallFunctionObjArgs(c->resolve_fn, key,
                                                     create ? Py_True : Py_False, NULL);
        if (res == NULL)
            return -1;
        if (res == Py_None) {
            r = 0;
        } else if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) < 2) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_TypeError, "resolve must return (slot, state, ...) or None");
            return -1;
        } else {
            *slot = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(res, 0));
            *state = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(res, 1));
            r = PyErr_Occurred() ? -1 : 1;
        }
        Py_DECREF(res);
    }
    if (r < 0)
        return -1;
    if (closed_meanwhile(c))        /* by another thread, while in Python */
        return -1;
    if (r == 0)
        return 0;
    if (!valid_slot(c, *slot)) {
        PyErr_SetString(PyExc_IndexError, "resolve returned a bad slot");
        return -1;
    }
    if (cacheable) {
        cache_entry e = {*slot, *state};
        PyObject *entry = PyBytes_FromStringAndSize((const char *)&e, sizeof e);
        if (entry == NULL)
            return -1;
        if (PyDict_GET_SIZE(c->cache) >= c->cache_limit)
            PyDict_Clear(c->cache);
        int failed = PyDict_SetItem(c->cache, key, entry) < 0;
        Py_DECREF(entry);
        if (failed)
            return -1;
    }
    return 1;
}

/* resolve_ttl for a key created without a deadline (the common case). */
static inline int
resolve(Core *c, PyObject *key, int create, int use_cache, uint64_t *slot, uint64_t *state)
{
    return resolve_ttl(c, key, create, use_cache, 0, NULL, slot, state);
}

/* resolve_ttl for the verbs' hot path, inlined into each verb: a cache hit
 * (the 16-byte {slot, state} entry, read with one copy) validated as
 * resolve_ttl validates it (the index names a slot of an attached tier,
 * the state word is unchanged, the key has not expired).  A miss or a stale
 * entry is resolve_ttl's, told not to look the cache up a second time.
 * (perf's digit-mask conversion of a cached (slot, state) tuple is moot
 * here: entries hold no ints.) */
static inline __attribute__((always_inline)) int
resolve_fast_ttl(Core *c, PyObject *key, int create, int use_cache, uint64_t deadline,
                 struct first_value *first, uint64_t *slot, uint64_t *state)
{
    if (!(use_cache && c->has_view && cacheable_key(key, 0)))
        return resolve_ttl(c, key, create, use_cache, deadline, first, slot, state);
    PyObject *hit = PyDict_GetItemWithError(c->cache, key);
    if (hit != NULL) {
        if (PyBytes_CheckExact(hit)
                && PyBytes_GET_SIZE(hit) == (Py_ssize_t)sizeof(cache_entry)) {
            cache_entry e;
            memcpy(&e, PyBytes_AS_STRING(hit), sizeof e);
            if (valid_slot(c, e.slot)) {
                char *at = slot_at(c, e.slot);
                if (load_acq(at) == e.state && !slot_expired(c, at, e.state)) {
                    *slot = e.slot;
                    *state = e.state;
                    return 1;
                }
            }
        }
    } else if (PyErr_Occurred()) {
        return -1;
    }
    return resolve_ttl(c, key, create, 0, deadline, first, slot, state);
}

static inline int
resolve_fast(Core *c, PyObject *key, int create, int use_cache,
             uint64_t *slot, uint64_t *state)
{
    return resolve_fast_ttl(c, key, create, use_cache, 0, NULL, slot, state);
}

/* ------------------------------------------------------------------------ */
/* Counter verbs: word0 is the int64 value                                  */
/* ------------------------------------------------------------------------ */

/* Read (state, word0) as a consistent pair. Returns 0 if the state changed. */
static inline int
read_pair(char *slot, uint64_t state, int64_t *value)
{
    int64_t v = (int64_t)load_acq(word0_of(slot));
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (load_acq(slot) != state)
        return 0;
    *value = v;
    return 1;
}

/* The read-modify-write verbs share one loop: resolve, then CAS (state,
 * word0) until it lands; a changed state means the key moved or was deleted,
 * so it is resolved again (bounded: the insert waits on the stripe). */
enum rmw { RMW_ADD, RMW_SET, RMW_EXCHANGE, RMW_GET };

/* The ttl= keyword of a write verb as a deadline in expiry units (0: None,
 * keep the key's expiry as it is).  A number of seconds: an int or float
 * (not a bool), positive and finite, as shmdict.validate.seconds rules. */
static int
ttl_deadline(PyObject *o, uint64_t *deadline)
{
    *deadline = 0;
    if (o == NULL || o == Py_None)
        return 0;
    if (PyBool_Check(o) || !(PyLong_Check(o) || PyFloat_Check(o))) {
        PyErr_Format(PyExc_TypeError, "ttl must be a number of seconds, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    /* At most ~30 years: a deadline in ns must stay far from 2^64. */
    if (!(v > 0) || !isfinite(v) || v > 1e9) {
        PyErr_Format(PyExc_ValueError, "ttl must be a positive, finite number of seconds "
                     "(at most 1e9), got %R", o);
        return -1;
    }
    uint64_t ns = (uint64_t)ceil(v * 1e9);
    *deadline = deadline_in(ns ? ns : 1);
    return 0;
}

/* The keywords of a METH_FASTCALL | METH_KEYWORDS write verb: only ttl=. */
static int
ttl_kwarg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *verb,
          uint64_t *deadline)
{
    *deadline = 0;
    if (kwnames == NULL)
        return 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        if (PyUnicode_CompareWithASCIIString(kw, "ttl") != 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                         verb, kw);
            return -1;
        }
        if (ttl_deadline(args[nargs + k], deadline) < 0)
            return -1;
    }
    return 0;
}

/* Inlined into the two functions below, so that the common one (no
 * deadline) is compiled with the deadline a constant 0: a plain add costs
 * what it did before expiry existed, bar the expires load in the lookup. */
static inline __attribute__((always_inline)) PyObject *
counter_rmw_body(Core *c, PyObject *key, enum rmw op, int64_t arg, uint64_t deadline)
{
    REQUIRE_OPEN(c);
    /* A new key is created holding the result (add: the default plus the
     * amount; set, exchange: the value), so no process, snapshot or kill
     * ever sees it holding the default in between.  (Keys the Python
     * resolve callable inserts, those the C encoder does not take, are
     * inserted with the default and then changed.) */
    struct first_value first = {arg, 0}, *fp = &first;
    if (op == RMW_GET || (op == RMW_ADD && __builtin_add_overflow(c->default_word0, arg,
                                                                 &first.word0)))
        fp = NULL;          /* created holding the default (an overflow raises below) */
    for (int attempt = 0; attempt < 1000000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast_ttl(c, key, 1, attempt == 0, deadline, fp, &i, &s);
        if (r < 0)
            return NULL;
        if (first.created)
            return PyLong_FromLongLong(op == RMW_EXCHANGE ? c->default_word0 : first.word0);
        char *slot = slot_at(c, i);
        for (;;) {
            int64_t old;
            if (!read_pair(slot, s, &old))
                break;                      /* state changed: resolve again */
            int64_t new;
            switch (op) {
            case RMW_ADD:
                if (__builtin_add_overflow(old, arg, &new)) {
                    PyErr_Format(PyExc_OverflowError,
                                 "counter overflow: %lld + %lld does not fit in int64",
                                 (long long)old, (long long)arg);
                    return NULL;
                }
                break;
            case RMW_GET:
                return PyLong_FromLongLong(old);
            default:
                new = arg;
            }
            if (cas_pair(slot, s, (uint64_t)old, s, (uint64_t)new, NULL)) {
                if (deadline != 0)
                    apply_deadline(c, i, s, deadline);
                return PyLong_FromLongLong(op == RMW_EXCHANGE ? old : new);
            }
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return NULL;
}

static PyObject *
counter_rmw(Core *c, PyObject *key, enum rmw op, int64_t arg)
{
    return counter_rmw_body(c, key, op, arg, 0);
}

static PyObject *
counter_rmw_ttl(Core *c, PyObject *key, enum rmw op, int64_t arg, uint64_t deadline)
{
    if (deadline == 0)
        return counter_rmw(c, key, op, arg);
    return counter_rmw_body(c, key, op, arg, deadline);
}

static PyObject *
Core_add(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    long long n = 1;
    uint64_t deadline = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "add(key, n=1, *, ttl=None)");
        return NULL;
    }
    if (kwnames != NULL && ttl_kwarg(args, nargs, kwnames, "add", &deadline) < 0)
        return NULL;
    if (nargs == 2) {
        if (!PyLong_Check(args[1])) {
            PyErr_Format(PyExc_TypeError, "add() amount must be an int, not %.100s",
                         Py_TYPE(args[1])->tp_name);
            return NULL;
        }
        n = PyLong_AsLongLong(args[1]);
        if (n == -1 && PyErr_Occurred())
            return NULL;
    }
    return deadline ? counter_rmw_ttl(self, args[0], RMW_ADD, n, deadline)
                    : counter_rmw(self, args[0], RMW_ADD, n);
}

static int
value_arg(PyObject *o, long long *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "counter values are ints, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    *out = PyLong_AsLongLong(o);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
Core_set(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    long long v;
    uint64_t deadline = 0;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set(key, value, *, ttl=None)");
        return NULL;
    }
    if (kwnames != NULL && ttl_kwarg(args, nargs, kwnames, "set", &deadline) < 0)
        return NULL;
    if (value_arg(args[1], &v) < 0)
        return NULL;
    PyObject *r = counter_rmw_ttl(self, args[0], RMW_SET, v, deadline);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
Core_exchange(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    long long v;
    uint64_t deadline = 0;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "exchange(key, value, *, ttl=None)");
        return NULL;
    }
    if (kwnames != NULL && ttl_kwarg(args, nargs, kwnames, "exchange", &deadline) < 0)
        return NULL;
    if (value_arg(args[1], &v) < 0)
        return NULL;
    return counter_rmw_ttl(self, args[0], RMW_EXCHANGE, v, deadline);
}

static PyObject *
Core_value(Core *self, PyObject *key)
{
    return counter_rmw(self, key, RMW_GET, 0);
}

/* ------------------------------------------------------------------------ */
/* Float counters: word0 holds the IEEE-754 bits of a float64               */
/* (shmdict.prometheus; self-contained: resolve, read_pair, cas_pair only)  */
/* ------------------------------------------------------------------------ */

/* add_float(key, x) -> float: atomically add x to the float64 whose bits are
 * the key's value word (created at 0, whose bits are 0.0).  A CAS loop on
 * (state, word0), as counter_rmw: an add never lands on a slot deleted and
 * reused meanwhile, and concurrent adds never lose one another (a CAS that
 * fails re-reads and re-adds).  Exact for integers up to 2**53. */
static PyObject *
Core_add_float(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    double x = 1.0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "add_float(key, x=1.0)");
        return NULL;
    }
    if (nargs == 2) {
        x = PyFloat_AsDouble(args[1]);
        if (x == -1.0 && PyErr_Occurred())
            return NULL;
    }
    REQUIRE_OPEN(self);
    for (int attempt = 0; attempt < 1000000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast(self, args[0], 1, attempt == 0, &i, &s);
        if (r < 0)
            return NULL;
        char *slot = slot_at(self, i);
        for (;;) {
            int64_t old;
            if (!read_pair(slot, s, &old))
                break;                      /* state changed: resolve again */
            double now;
            memcpy(&now, &old, sizeof now);
            now += x;
            uint64_t new;
            memcpy(&new, &now, sizeof new);
            if (cas_pair(slot, s, (uint64_t)old, s, new, NULL))
                return PyFloat_FromDouble(now);
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return NULL;
}

/* set_float(key, x): store the float64 x as the key's value word. */
static PyObject *
Core_set_float(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_float(key, x)");
        return NULL;
    }
    double x = PyFloat_AsDouble(args[1]);
    if (x == -1.0 && PyErr_Occurred())
        return NULL;
    int64_t bits;
    memcpy(&bits, &x, sizeof bits);
    PyObject *r = counter_rmw(self, args[0], RMW_SET, bits);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* The pair read() returns, built directly (Py_BuildValue parses its format
 * string on every call: a third of read()'s instructions). */
static PyObject *
value_exists(int64_t v, int exists)
{
    PyObject *t = PyTuple_New(2);
    PyObject *n = PyLong_FromLongLong((long long)v);
    if (t == NULL || n == NULL) {
        Py_XDECREF(t);
        Py_XDECREF(n);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, n);
    PyTuple_SET_ITEM(t, 1, Py_NewRef(exists ? Py_True : Py_False));
    return t;
}

/* read()'s pair, reusing the last one when nobody kept it: `value, exists =
 * d.read(key)` unpacks and drops it, so its only reference is ours again
 * (the trick of CPython's own enumerate and zip).  A static, not per
 * table: it holds only an int and a bool.  Not on a free-threaded build,
 * where a reference count of 1 proves nothing. */
static PyObject *read_pair_reused;

static PyObject *
read_result(int64_t v, int exists)
{
#ifndef Py_GIL_DISABLED
    PyObject *t = read_pair_reused;
    if (t != NULL && Py_REFCNT(t) == 1) {
        PyObject *n = PyLong_FromLongLong((long long)v);
        if (n == NULL)
            return NULL;
        PyObject *old0 = PyTuple_GET_ITEM(t, 0), *old1 = PyTuple_GET_ITEM(t, 1);
        PyTuple_SET_ITEM(t, 0, n);
        PyTuple_SET_ITEM(t, 1, Py_NewRef(exists ? Py_True : Py_False));
        Py_DECREF(old0);
        Py_DECREF(old1);
        return Py_NewRef(t);
    }
    t = value_exists(v, exists);
    if (t != NULL) {
        Py_XSETREF(read_pair_reused, Py_NewRef(t));
    }
    return t;
#else
    return value_exists(v, exists);
#endif
}

/* read(key) -> (value, exists); never creates.  `reuse`: the pair may be
 * read_pair_reused (a single read; never for a batch, which keeps them). */
static PyObject *
read_key(Core *self, PyObject *key, int reuse)
{
    REQUIRE_OPEN(self);
    for (int attempt = 0; attempt < 1000000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast(self, key, 0, attempt == 0, &i, &s);
        if (r < 0)
            return NULL;
        if (r == 0)
            return reuse ? read_result(0, 0) : value_exists(0, 0);
        int64_t v;
        if (read_pair(slot_at(self, i), s, &v))
            return reuse ? read_result(v, 1) : value_exists(v, 1);
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return NULL;
}

static PyObject *
Core_read(Core *self, PyObject *key)
{
    return read_key(self, key, 1);
}

/* ------------------------------------------------------------------------ */
/* Batch verbs: many keys in one call                                       */
/* ------------------------------------------------------------------------ */

/* The items of a batch as a new list: a mapping's items(), or any iterable
 * (of pairs, or of keys).  A list of its own, so that Python code the
 * resolver runs (an insert) cannot change what is being walked. */
static PyObject *
batch_items(PyObject *batch)
{
    if (PyDict_Check(batch))
        return PyDict_Items(batch);
    return PySequence_List(batch);
}

/* add_many(mapping or (key, n) pairs) -> [new value per pair]: one add per
 * pair, each atomic as add() is, in order; not a transaction (an error stops
 * the batch, with the adds before it done). */
/* add_many of an exact dict, walked in place (no list of item tuples: they
 * were a third of a batch's cost).  Each key and amount is held while its
 * add runs, since an insert calls Python; a dict that changes size meanwhile
 * stops the batch with RuntimeError, as iterating it in Python would.
 * `deadline`: add_many(..., ttl=)'s, given to every key (0: none). */
static PyObject *
add_many_dict(Core *self, PyObject *batch, uint64_t deadline)
{
    Py_ssize_t n = PyDict_GET_SIZE(batch), pos = 0, k = 0;
    PyObject *out = PyList_New(n), *key, *value;
    while (out != NULL && PyDict_Next(batch, &pos, &key, &value)) {
        if (k >= n)
            break;
        long long amount;
        Py_INCREF(key);
        Py_INCREF(value);
        PyObject *v = value_arg(value, &amount) < 0 ? NULL
                      : counter_rmw_ttl(self, key, RMW_ADD, amount, deadline);
        Py_DECREF(key);
        Py_DECREF(value);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k++, v);
        if (PyDict_GET_SIZE(batch) != n) {
            PyErr_SetString(PyExc_RuntimeError, "add_many(): the mapping changed size "
                            "during the batch (the adds before it are done)");
            Py_CLEAR(out);
        }
    }
    if (out != NULL && k != n) {     /* not reachable with a dict of unchanged size */
        PyErr_SetString(PyExc_RuntimeError, "add_many(): the mapping changed during the batch");
        Py_CLEAR(out);
    }
    return out;
}

static PyObject *
Core_add_many(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    uint64_t deadline = 0;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "add_many(batch, *, ttl=None)");
        return NULL;
    }
    if (kwnames != NULL && ttl_kwarg(args, nargs, kwnames, "add_many", &deadline) < 0)
        return NULL;
    PyObject *batch = args[0];
    REQUIRE_OPEN(self);
    if (PyDict_CheckExact(batch))
        return add_many_dict(self, batch, deadline);
    PyObject *items = batch_items(batch);
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t k = 0; out != NULL && k < n; k++) {
        PyObject *pair = PyList_GET_ITEM(items, k);
        long long amount;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "add_many() takes a mapping of key -> n, "
                                             "or (key, n) pairs");
            Py_CLEAR(out);
            break;
        }
        if (value_arg(PyTuple_GET_ITEM(pair, 1), &amount) < 0) {
            Py_CLEAR(out);
            break;
        }
        PyObject *v = counter_rmw_ttl(self, PyTuple_GET_ITEM(pair, 0), RMW_ADD, amount,
                                      deadline);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, v);
    }
    Py_DECREF(items);
    return out;
}

/* read_many(keys) -> [(value, exists) per key]: read() of each, never creating. */
static PyObject *
Core_read_many(Core *self, PyObject *keys)
{
    REQUIRE_OPEN(self);
    PyObject *items = batch_items(keys);
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t k = 0; out != NULL && k < n; k++) {
        PyObject *v = read_key(self, PyList_GET_ITEM(items, k), 0);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, v);
    }
    Py_DECREF(items);
    return out;
}

/* cas(key, old, new, set_on_not_exists=False) -> bool.  A missing key is
 * created holding `new` (in one insert, never visible as the default) only
 * when set_on_not_exists is true. */
static PyObject *
Core_cas(Core *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", "old", "new", "set_on_not_exists", "ttl", NULL};
    PyObject *key, *oldo, *newo, *ttlo = Py_None;
    int set_missing = 0;
    long long old, new;
    uint64_t deadline;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|p$O", kwlist,
                                     &key, &oldo, &newo, &set_missing, &ttlo))
        return NULL;
    if (value_arg(oldo, &old) < 0 || value_arg(newo, &new) < 0
            || ttl_deadline(ttlo, &deadline) < 0)
        return NULL;
    REQUIRE_OPEN(self);
    for (int attempt = 0; attempt < 1000000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast(self, key, 0, attempt == 0, &i, &s);
        if (r < 0)
            return NULL;
        if (r == 0) {
            if (!set_missing)
                Py_RETURN_FALSE;
            /* Ask the Python layer to insert the key with `new`. */
            PyObject *res = PyObject_CallFunction(self->insert_with_fn, "OL", key, new);
            if (res == NULL)
                return NULL;
            int created = PyObject_IsTrue(res);
            Py_DECREF(res);
            if (created < 0)
                return NULL;
            if (created) {
                if (deadline != 0 && resolve(self, key, 0, 1, &i, &s) == 1)
                    apply_deadline(self, i, s, deadline);
                if (PyErr_Occurred())
                    return NULL;
                Py_RETURN_TRUE;
            }
            continue;   /* somebody else created it first: CAS against it */
        }
        int64_t cur;
        char *slot = slot_at(self, i);
        if (!read_pair(slot, s, &cur))
            continue;
        if (cur != old)
            Py_RETURN_FALSE;
        if (cas_pair(slot, s, (uint64_t)old, s, (uint64_t)new, NULL)) {
            if (deadline != 0)
                apply_deadline(self, i, s, deadline);
            Py_RETURN_TRUE;
        }
        /* Lost a race: if only the value changed the answer is False, if the
         * slot changed, look again. */
        if (load_acq(slot) == s)
            Py_RETURN_FALSE;
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* GCRA rate limiting on a Counter key                                      */
/* ------------------------------------------------------------------------ */

static inline int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* gcra(key, emission_ns, tolerance_ns, cost) -> (allowed, remaining,
 * retry_after_ns, reset_after_ns).  One step of the Generic Cell Rate
 * Algorithm (see shmdict/ratelimit.py, gcra_step, for the rule) on the key's
 * theoretical arrival time, in nanoseconds of CLOCK_MONOTONIC (one clock for
 * the whole host), advanced by the same 16-byte CAS as every counter update.
 * This is RateLimiter.hit without a Python frame; cost 0 only looks. */
/* One GCRA step on `key`: fills out[] = {allowed, remaining, retry_after_ns,
 * reset_after_ns}.  Returns -1 with an exception set. */
static int
gcra_step(Core *self, PyObject *key, int64_t emission, int64_t tolerance, int64_t cost,
          int64_t out[4])
{
    if (emission <= 0 || tolerance < 0 || cost < 0
            || (cost > 0 && emission > INT64_MAX / 4 / cost)) {
        PyErr_SetString(PyExc_ValueError, "gcra: bad emission interval, tolerance or cost");
        return -1;
    }
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
        return -1;
    }
    int64_t step = cost * emission;
    /* The key expires when its TAT passes (a TAT in the past allows what
     * an absent key does), so a table of clients that come and go never
     * fills: a new key is inserted with a deadline, an allowed hit moves it
     * to the new TAT. */
    uint64_t first_deadline = cost != 0 ? deadline_in((uint64_t)step) : 0;
    for (int attempt = 0; attempt < 1000000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast_ttl(self, key, cost != 0, attempt == 0, first_deadline, NULL,
                                 &i, &s);
        if (r < 0)
            return -1;
        int64_t tat = 0;
        if (r == 1 && !read_pair(slot_at(self, i), s, &tat))
            continue;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        int64_t base = tat > now ? tat : now;
        /* tat comes from the segment (any int64: d.set() on the key, or a
         * corrupted word): cap how far ahead it counts, so that lead + step
         * cannot overflow, and saturate the new tat. */
        int64_t lead = base - now;
        if (lead > INT64_MAX / 2)
            lead = INT64_MAX / 2;
        int64_t ahead = lead + step;
        if (ahead > tolerance) {
            out[0] = 0;
            out[1] = floor_div(tolerance - lead, emission);
            out[2] = ahead - tolerance;
            out[3] = lead;
            return 0;
        }
        int64_t new_tat = base > INT64_MAX - step ? INT64_MAX : base + step;
        if (step == 0 || cas_pair(slot_at(self, i), s, (uint64_t)tat, s,
                                  (uint64_t)new_tat, NULL)) {
            if (step != 0)
                apply_deadline(self, i, s, deadline_at(new_tat));
            out[0] = 1;
            out[1] = floor_div(tolerance - ahead, emission);
            out[2] = 0;
            out[3] = ahead;
            return 0;
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return -1;
}

/* gcra(key, emission_ns, tolerance_ns, cost) -> (allowed, remaining,
 * retry_after_ns, reset_after_ns): the backend-neutral form (see
 * shmdict/ratelimit.py, whose gcra_step states the rule). */
static PyObject *
Core_gcra(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "gcra(key, emission_ns, tolerance_ns, cost)");
        return NULL;
    }
    long long emission = PyLong_AsLongLong(args[1]);
    long long tolerance = PyLong_AsLongLong(args[2]);
    long long cost = PyLong_AsLongLong(args[3]);
    int64_t out[4];
    if (PyErr_Occurred() || gcra_step(self, args[0], emission, tolerance, cost, out) < 0)
        return NULL;
    PyObject *t = PyTuple_New(4);
    if (t == NULL)
        return NULL;
    PyTuple_SET_ITEM(t, 0, PyBool_FromLong((long)out[0]));
    for (int k = 1; k < 4; k++) {
        PyObject *v = PyLong_FromLongLong(out[k]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, k, v);
    }
    return t;
}

/* gcra_hit(emission_ns, tolerance_ns, burst, result_type, fallback, key,
 * cost=1) -> result_type(allowed, burst, remaining, retry_after_s,
 * reset_after_s).  RateLimiter.hit itself, bound with functools.partial to
 * its first five arguments, so a hit costs one C call.  `fallback` is
 * (exception_type, handler): when the step raises that exception (TableFull),
 * handler(key, cost) answers instead (it sweeps expired keys and retries). */
static PyObject *
Core_gcra_hit(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* hit(key, cost=1): `key` and `cost` may also come as keywords (the
     * positional call, the hot path, never looks at kwnames).  With
     * METH_FASTCALL | METH_KEYWORDS the keyword values follow the positional
     * ones in `args`; gather all seven into `all`. */
    PyObject *all[7] = {NULL};
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        if (nargs > 7) {
            PyErr_SetString(PyExc_TypeError, "hit(key, cost=1)");
            return NULL;
        }
        for (Py_ssize_t k = 0; k < nargs; k++)
            all[k] = args[k];
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
            PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
            int at = -1;
            if (PyUnicode_CompareWithASCIIString(kw, "key") == 0)
                at = 5;
            else if (PyUnicode_CompareWithASCIIString(kw, "cost") == 0)
                at = 6;
            if (at < 0) {
                PyErr_Format(PyExc_TypeError, "hit() got an unexpected keyword argument '%U'",
                             kw);
                return NULL;
            }
            if (all[at] != NULL) {
                PyErr_Format(PyExc_TypeError, "hit() got multiple values for argument '%U'",
                             kw);
                return NULL;
            }
            all[at] = args[nargs + k];
        }
        for (int k = 0; k < 6; k++) {
            if (all[k] == NULL) {
                PyErr_SetString(PyExc_TypeError, "hit() missing required argument: 'key'");
                return NULL;
            }
        }
        args = all;
        nargs = all[6] != NULL ? 7 : 6;
    }
    if (nargs < 6 || nargs > 7) {
        PyErr_SetString(PyExc_TypeError, "hit(key, cost=1)");
        return NULL;
    }
    long long emission = PyLong_AsLongLong(args[0]);
    long long tolerance = PyLong_AsLongLong(args[1]);
    long long burst = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    PyTypeObject *result_type = (PyTypeObject *)args[3];
    PyObject *fallback = args[4], *key = args[5];
    long long cost = 1;
    if (nargs == 7) {
        if (!PyLong_Check(args[6]) || PyBool_Check(args[6])) {
            PyErr_Format(PyExc_TypeError, "cost must be an int, not %.100s",
                         Py_TYPE(args[6])->tp_name);
            return NULL;
        }
        cost = PyLong_AsLongLong(args[6]);
        if (cost == -1 && PyErr_Occurred())
            return NULL;
        if (cost < 0) {
            PyErr_Format(PyExc_ValueError, "cost must be >= 0, got %lld", cost);
            return NULL;
        }
        if (cost > burst) {
            PyErr_Format(PyExc_ValueError, "cost %lld exceeds the limit's burst of %lld: "
                         "such a hit could never be allowed", cost, burst);
            return NULL;
        }
    }
    if (!PyType_Check(result_type) || !PyType_IsSubtype(result_type, &PyTuple_Type)
            || !PyTuple_Check(fallback) || PyTuple_GET_SIZE(fallback) != 2) {
        PyErr_SetString(PyExc_TypeError, "gcra_hit: bad result type or fallback");
        return NULL;
    }
    int64_t out[4];
    if (gcra_step(self, key, emission, tolerance, cost, out) < 0) {
        if (!PyErr_ExceptionMatches(PyTuple_GET_ITEM(fallback, 0)))
            return NULL;
        PyErr_Clear();
        PyObject *c = PyLong_FromLongLong(cost);
        if (c == NULL)
            return NULL;
        PyObject *r = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(fallback, 1), key, c, NULL);
        Py_DECREF(c);
        return r;
    }
    PyObject *r = result_type->tp_alloc(result_type, 5);
    if (r == NULL)
        return NULL;
    PyObject *items[5] = {
        PyBool_FromLong((long)out[0]), PyLong_FromLongLong(burst),
        PyLong_FromLongLong(out[1]), PyFloat_FromDouble((double)out[2] / 1e9),
        PyFloat_FromDouble((double)out[3] / 1e9)};
    for (int k = 0; k < 5; k++) {
        if (items[k] == NULL) {
            for (int j = 0; j < 5; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(r);
            return NULL;
        }
    }
    for (int k = 0; k < 5; k++)
        PyTuple_SET_ITEM(r, k, items[k]);
    return r;
}

/* ------------------------------------------------------------------------ */
/* Slot-level primitives for the Python layer                               */
/* ------------------------------------------------------------------------ */

/* locate(key, create) -> (slot, state) | None: a key object to its slot,
 * through the per-process cache (validated against the slot's state word) or
 * Core(resolve=...).  What every layout's handle calls before its C verb. */
static PyObject *
Core_locate(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "locate(key, create)");
        return NULL;
    }
    int create = PyObject_IsTrue(args[1]);
    if (create < 0)
        return NULL;
    REQUIRE_OPEN(self);
    uint64_t i, s;
    int r = resolve_fast(self, args[0], create, 1, &i, &s);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    PyObject *t = PyTuple_New(2);
    PyObject *a = PyLong_FromUnsignedLongLong(i), *b = PyLong_FromUnsignedLongLong(s);
    if (t == NULL || a == NULL || b == NULL) {
        Py_XDECREF(t); Py_XDECREF(a); Py_XDECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    return t;
}

/* find(key_bytes, hash, include_expired=False) -> (slot, state) | None;
 * an expired key is None unless include_expired (check's probe-chain walk). */
static PyObject *
Core_find(Core *self, PyObject *args)
{
    Py_buffer key;
    unsigned long long h;
    int include_expired = 0;
    if (!PyArg_ParseTuple(args, "y*K|p", &key, &h, &include_expired))
        return NULL;
    if (!self->has_view || (uint64_t)key.len > self->key_size) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, self->has_view ? "key too long" : "table is closed");
        return NULL;
    }
    uint64_t i, s;
    int found = find_any(self, key.buf, (uint64_t)key.len, h, &i, &s);
    PyBuffer_Release(&key);
    if (found < 0)
        return NULL;
    if (found == 0 || (found == 2 && !include_expired))    /* absent, or expired */
        Py_RETURN_NONE;
    return slot_tuple(i, s, -1);
}

/* Raise shmdict.errors.TableFull with the message shmdict has always given.
 * The count is read again here, after the admissions said "full"; one that
 * no process can have written (another process overwrote it since) is
 * CorruptSegment instead: a TableFull never names an impossible count. */
static void
raise_table_full(Core *c)
{
    CoreState *st = core_state();
    if (st == NULL)
        return;
    uint64_t sum = 0;
    for (unsigned k = 0; k < c->ntiers; k++)
        sum += load_acq(&c->tiers[k].header->live);
    long long live = (long long)sum;
    if (live < 0 || (uint64_t)live > c->max_capacity) {
        PyErr_Format(st->CorruptSegment,
                     "table %R: its live count %lld is outside 0..%llu: the segment was "
                     "overwritten; `shmdict check %U` recounts it",
                     c->name, live, (unsigned long long)c->max_capacity, c->name);
        return;
    }
    PyErr_Format(st->TableFull,
                 "table %R is full: %lld of %llu keys in use; delete keys or open a "
                 "table with a larger capacity",
                 c->name, live, (unsigned long long)c->max_capacity);
}

/* insert(key_bytes, hash, word0, extra) -> (slot, state, created); raises
 * TableFull when the table is full.  The caller holds the key's stripe, so
 * "absent" stays true between the lookup and the insert. */
static PyObject *
Core_insert(Core *self, PyObject *args)
{
    Py_buffer key, extra;
    unsigned long long h;
    long long word0;
    if (!PyArg_ParseTuple(args, "y*KLy*", &key, &h, &word0, &extra))
        return NULL;
    PyObject *result = NULL;
    uint64_t i, s;
    int found;
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
    } else if (!identity_ready()) {
        /* the OSError is set */
    } else if ((uint64_t)key.len > self->key_size) {
        PyErr_SetString(PyExc_ValueError, "key too long");
    } else if ((uint64_t)extra.len != self->extra_size) {
        PyErr_SetString(PyExc_ValueError, "value has the wrong size");
    } else if (!stripe_held(self, stripe_of(self, h))) {
        /* the RuntimeError is set */
    } else if ((found = find_any(self, key.buf, (uint64_t)key.len, h, &i, &s)) != 0
               && !(found == 2 && reclaim_slot(self, i, s, stripe_of(self, h)))) {
        if (found == 2)
            PyErr_SetString(PyExc_RuntimeError, "an expired key could not be reclaimed "
                            "(it changed meanwhile): try again");
        else if (found > 0)
            result = Py_BuildValue("(KKO)", (unsigned long long)i, (unsigned long long)s,
                                   Py_False);
    } else {
        int rc = insert_slot(self, key.buf, (uint64_t)key.len, h, word0, extra.buf, 0,
                             &i, &s);
        if (rc == RC_OK) {
            result = Py_BuildValue("(KKO)", (unsigned long long)i, (unsigned long long)s,
                                   Py_True);
        } else if (rc == RC_FULL) {
            raise_table_full(self);
        } else if (rc == RC_ERROR) {
            /* the CorruptSegment is set */
        } else {
            CoreState *st = core_state();
            if (st != NULL)
                PyErr_Format(st->CorruptSegment,
                             "table %R: no free slot although the live count is below "
                             "capacity (corrupt table: run `shmdict check %U`)",
                             self->name, self->name);
        }
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&extra);
    return result;
}

/* insert_new(key_bytes, hash, word0, extra) -> (slot, state, created): as
 * insert, but takes (and releases) the key's stripe itself, and grows the
 * table through Core(grow=...) when every tier is full.  The caller must
 * not hold the key's stripe. */
static PyObject *
Core_insert_new(Core *self, PyObject *args)
{
    Py_buffer key, extra;
    unsigned long long h;
    long long word0;
    if (!PyArg_ParseTuple(args, "y*KLy*", &key, &h, &word0, &extra))
        return NULL;
    PyObject *result = NULL;
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
    } else if (!identity_ready()) {
        /* the OSError is set */
    } else if (self->sems == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "stripe semaphores not attached");
    } else if ((uint64_t)key.len > self->key_size) {
        PyErr_SetString(PyExc_ValueError, "key too long");
    } else if ((uint64_t)extra.len != self->extra_size) {
        PyErr_SetString(PyExc_ValueError, "value has the wrong size");
    } else {
        result = insert_new(self, key.buf, (uint64_t)key.len, h, word0, extra.buf);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&extra);
    return result;
}

/* For deleting an rw lock: CAS the free writer word `v` to us, then look
 * at the reader cells.  RC_OK: we hold the writer word and no live reader
 * is inside; RC_BUSY (*busy: a reader's id): a reader is inside, and the
 * writer word is given back; RC_STALE: the word changed, look again. */
static int
rw_delete_claim(Core *c, uint64_t i, uint64_t s, uint64_t v, int64_t *busy)
{
    char *slot = slot_at(c, i);
    uint64_t mine = (v & WAITERS_BIT) | my_id();
    if (!cas_pair(slot, s, v, s, mine, NULL))
        return RC_STALE;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t *cells = (uint64_t *)slot_extra(c, slot);
    for (uint64_t k = 0; k < c->extra_size / 8; k++) {
        uint64_t e = load_acq(&cells[k]);
        if (e == 0)
            continue;
        if (!id_alive(e)) {
            cas64(&cells[k], &e, 0);
            continue;
        }
        *busy = (int64_t)e;
        uint64_t back = mine;
        for (;;) {
            uint64_t seen;
            if (cas_pair(slot, s, back, s, back & WAITERS_BIT, &seen)) {
                if (back & WAITERS_BIT)
                    futex_wake_all(word0_of(slot));
                break;
            }
            if (load_acq(slot) != s || id_pid(seen) != id_pid(mine))
                break;
            back = seen;              /* a waiter set its bit meanwhile */
        }
        return RC_BUSY;
    }
    return RC_OK;
}

/* delete(slot, state, stripe, mode) -> (code, word0)
 *   mode 0 (Counter): take whatever value word0 holds, atomically with the
 *                     tombstone, so nothing added before is lost;
 *   mode 1 (Lock): only if word0 (the lock word) is 0, else RC_BUSY;
 *   mode 2 (Struct): only if this process holds the lock in word0, which
 *                    the tombstone releases, else RC_NOT_OWNER.
 * code is RC_OK, RC_STALE (the slot changed) or RC_BUSY.  Caller holds stripe. */
static PyObject *
Core_delete(Core *self, PyObject *args)
{
    unsigned long long i, s, stripe;
    int mode;
    if (!PyArg_ParseTuple(args, "KKKi", &i, &s, &stripe, &mode))
        return NULL;
    REQUIRE_OPEN(self);
    if (parse_slot(self, i) < 0)
        return NULL;
    if (stripe >= self->nstripes) {
        PyErr_SetString(PyExc_IndexError, "stripe out of range");
        return NULL;
    }
    if (!stripe_held(self, stripe))
        return NULL;
    char *slot = slot_at(self, i);
    for (int spins = 0; spins < 1000000; spins++) {
        int64_t v;
        if (!read_pair(slot, s, &v))
            return Py_BuildValue("(iL)", RC_STALE, 0LL);
        /* A lock word is free when it names nobody: the waiters bit alone
         * (left by a waiter after the owner died) is not a holder. */
        if (mode == 1 && id_pid((uint64_t)v) != 0)
            return Py_BuildValue("(iL)", RC_BUSY, (long long)v);
        if (mode == 1 && self->extra_size > 0) {
            /* An rw lock: readers hold it too.  Take the writer word first
             * (a reader that comes after sees it and backs off), then
             * refuse if a live reader is inside, as a writer would wait. */
            int64_t busy = 0;
            int r = rw_delete_claim(self, i, s, (uint64_t)v, &busy);
            if (r == RC_STALE)
                continue;
            if (r == RC_BUSY)
                return Py_BuildValue("(iL)", RC_BUSY, (long long)busy);
            /* We hold the writer word: tombstone it (a waiter may set its
             * bit meanwhile; then again with the word as it is now). */
            uint64_t w = ((uint64_t)v & WAITERS_BIT) | my_id();
            for (int k = 0; k < 1000000; k++) {
                if (delete_slot(self, i, s, w, stripe, (w & WAITERS_BIT) != 0))
                    return Py_BuildValue("(iL)", RC_OK, 0LL);
                if (load_acq(slot) != s)
                    return Py_BuildValue("(iL)", RC_STALE, 0LL);
                w = load_acq(word0_of(slot));
            }
            break;
        }
        if (mode == 2 && (id_pid((uint64_t)v) == 0 || !is_me((uint64_t)v)))
            return Py_BuildValue("(iL)", RC_NOT_OWNER, (long long)v);
        /* mode 2 releases the record lock with the tombstone: wake its
         * waiters, who then see the slot changed (else they sleep out their
         * slice). */
        if (delete_slot(self, i, s, (uint64_t)v, stripe,
                        mode != 0 && ((uint64_t)v & WAITERS_BIT)))
            return Py_BuildValue("(iL)", RC_OK, (long long)v);
    }
    PyErr_SetString(PyExc_RuntimeError, "value kept changing during delete");
    return NULL;
}

/* slot_info(slot) -> (kind, state, key_bytes | None) for inspection. */
static PyObject *
Core_slot_info(Core *self, PyObject *arg)
{
    unsigned long long i = PyLong_AsUnsignedLongLong(arg);
    if (i == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    REQUIRE_OPEN(self);
    if (parse_slot(self, i) < 0)
        return NULL;
    char *slot = slot_at(self, i);
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint64_t s = load_acq(slot);
        if (st_kind(s) != KIND_PUBLISHED)
            return Py_BuildValue("(IKO)", st_kind(s), (unsigned long long)s, Py_None);
        uint64_t klen = st_klen(s);
        if (klen > self->key_size)
            return Py_BuildValue("(IKO)", st_kind(s), (unsigned long long)s, Py_None);
        PyObject *kb = PyBytes_FromStringAndSize(slot_key(slot), (Py_ssize_t)klen);
        if (kb == NULL)
            return NULL;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (load_acq(slot) == s)
            return Py_BuildValue("(IKN)", st_kind(s), (unsigned long long)s, kb);
        Py_DECREF(kb);
    }
    PyErr_SetString(PyExc_RuntimeError, "slot kept changing");
    return NULL;
}

/* published() -> list of (slot, state, key_bytes): a snapshot of the keys,
 * tier by tier. */
static PyObject *
Core_published(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    if (refresh_tiers(self) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (unsigned k = 0; k < self->ntiers; k++) {
        Tier *t = &self->tiers[k];
        for (uint64_t i = 0; i < t->nslots; i++) {
            char *slot = t->slots + i * self->slot_size;
            uint64_t s = load_acq(slot);
            if (st_kind(s) != KIND_PUBLISHED || st_klen(s) > self->key_size
                    || slot_expired(self, slot, s))
                continue;
            PyObject *kb = PyBytes_FromStringAndSize(slot_key(slot), (Py_ssize_t)st_klen(s));
            if (kb == NULL)
                goto fail;
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (load_acq(slot) != s) {      /* deleted while we copied: skip it */
                Py_DECREF(kb);
                continue;
            }
            PyObject *item = Py_BuildValue("(KKN)", (unsigned long long)slot_index(k, i),
                                           (unsigned long long)s, kb);
            if (item == NULL || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                goto fail;
            }
            Py_DECREF(item);
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* word0(slot, state) -> int | None when the slot no longer has that state. */
static PyObject *
Core_word0(Core *self, PyObject *args)
{
    unsigned long long i, s;
    if (!PyArg_ParseTuple(args, "KK", &i, &s))
        return NULL;
    REQUIRE_OPEN(self);
    if (parse_slot(self, i) < 0)
        return NULL;
    int64_t v;
    if (!read_pair(slot_at(self, i), s, &v))
        Py_RETURN_NONE;
    return PyLong_FromLongLong(v);
}

/* ------------------------------------------------------------------------ */
/* Expiry verbs                                                             */
/* ------------------------------------------------------------------------ */

/* set_ttl(key, seconds | None) -> bool: give an existing key a deadline
 * `seconds` from now, or none (None: persist); False if the key is absent
 * (or expired).  Lock-free (apply_deadline). */
static PyObject *
Core_set_ttl(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_ttl(key, seconds)");
        return NULL;
    }
    uint64_t deadline;
    if (ttl_deadline(args[1], &deadline) < 0)
        return NULL;
    REQUIRE_OPEN(self);
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint64_t i, s;
        int r = resolve(self, args[0], 0, attempt == 0, &i, &s);
        if (r < 0)
            return NULL;
        if (r == 0)
            Py_RETURN_FALSE;
        if (apply_deadline(self, i, s, deadline))
            Py_RETURN_TRUE;
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return NULL;
}

/* ttl(key) -> float | None: seconds until the key expires (>= 0), None
 * when it has no deadline or is absent (`key in d` tells them apart). */
static PyObject *
Core_ttl(Core *self, PyObject *key)
{
    REQUIRE_OPEN(self);
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint64_t i, s;
        int r = resolve(self, key, 0, attempt == 0, &i, &s);
        if (r < 0)
            return NULL;
        if (r == 0)
            Py_RETURN_NONE;
        char *slot = slot_at(self, i);
        uint64_t e = load_acq(expires_of(slot));
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (load_acq(slot) != s || (e & EXP_GEN_MASK) != st_gen(s))
            continue;
        uint64_t d = e >> EXP_SHIFT;
        if (d == 0)
            Py_RETURN_NONE;
        uint64_t at = d << EXP_SHIFT, now = monotonic_ns();
        return PyFloat_FromDouble(at > now ? (double)(at - now) / 1e9 : 0.0);
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return NULL;
}

/* expired() -> int: published keys whose deadline has passed (still
 * counted live until reclaimed); 0 at once for a table that never had a
 * deadline.  len() subtracts it. */
static PyObject *
Core_expired(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    long long n = 0;
    if (load_acq(&self->header->expiry_used) != 0) {
        for (unsigned k = 0; k < self->ntiers; k++) {
            Tier *t = &self->tiers[k];
            for (uint64_t i = 0; i < t->nslots; i++) {
                char *slot = t->slots + i * self->slot_size;
                uint64_t s = load_acq(slot);
                if (st_kind(s) == KIND_PUBLISHED && slot_expired(self, slot, s))
                    n++;
            }
        }
    }
    return PyLong_FromLongLong(n);
}

/* reclaim_expired() -> int: tombstone every expired key, each under its
 * stripe; how many. */
static PyObject *
Core_reclaim_expired(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    if (self->sems == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "stripe semaphores not attached");
        return NULL;
    }
    long long n = reclaim_expired_walk(self, 0);
    return n < 0 ? NULL : PyLong_FromLongLong(n);
}

/* deadline(slot, state) -> int | None: the key's raw expires word as
 * (deadline_ns or 0), for inspection and snapshots; None if the slot
 * changed. */
static PyObject *
Core_deadline(Core *self, PyObject *args)
{
    unsigned long long i, s;
    if (!PyArg_ParseTuple(args, "KK", &i, &s))
        return NULL;
    REQUIRE_OPEN(self);
    if (parse_slot(self, i) < 0)
        return NULL;
    char *slot = slot_at(self, i);
    uint64_t e = load_acq(expires_of(slot));
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (load_acq(slot) != s || (e & EXP_GEN_MASK) != st_gen(s))
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong((e >> EXP_SHIFT) << EXP_SHIFT);
}

/* ------------------------------------------------------------------------ */
/* Stripe ownership and repair                                              */
/* ------------------------------------------------------------------------ */

static PyObject *
Core_stripe_holder(Core *self, PyObject *arg)
{
    unsigned long long i = PyLong_AsUnsignedLongLong(arg);
    if (i == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    REQUIRE_OPEN(self);
    if (i >= self->nstripes) {
        PyErr_SetString(PyExc_IndexError, "stripe out of range");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(load_acq(&stripe_at(self, i)->holder));
}

/* stripe_cas(i, expected, desired) -> bool.  desired == -1 means "me". */
static PyObject *
Core_stripe_cas(Core *self, PyObject *args)
{
    unsigned long long i, expected;
    long long desired;
    if (!PyArg_ParseTuple(args, "KKL", &i, &expected, &desired))
        return NULL;
    REQUIRE_OPEN(self);
    if (i >= self->nstripes) {
        PyErr_SetString(PyExc_IndexError, "stripe out of range");
        return NULL;
    }
    uint64_t want = desired == -1 ? my_id() : (uint64_t)desired;
    uint64_t e = expected;
    return PyBool_FromLong(cas64(&stripe_at(self, i)->holder, &e, want));
}

/* Stripe recount (the caller holds the stripe): a slot a dead holder
 * claimed but never published becomes a tombstone, and the stripe's live
 * count is recounted from its published slots, in every tier: what `shmdict
 * check` does for a stripe whose count disagrees with its slots, and what a
 * takeover does when the dead holder's journal is garbage.  Only the stripe's own slots
 * matter, and while we hold the stripe none of them can change; other
 * stripes' slots can, at any moment, so a slot is counted only if its state
 * word is the same after its key was hashed as before.  Returns 0 with
 * *dropped and *delta set, -1 with an exception set. */
static int
recount_stripe(Core *self, uint64_t stripe, long long *dropped_out, long long *delta_out)
{
    long long dropped = 0, total_delta = 0;
    /* Every tier, published ones this process had not mapped included: the
     * stripe covers its hashes in all of them.  Each tier's own count of the
     * stripe is recounted from that tier's slots. */
    if (refresh_tiers(self) < 0)
        return -1;
    for (unsigned k = 0; k < self->ntiers; k++) {
        Tier *t = &self->tiers[k];
        long long counted = 0;
        for (uint64_t i = 0; i < t->nslots; i++) {
            char *slot = t->slots + i * self->slot_size;
            uint64_t s = load_acq(slot);
            if (st_kind(s) == KIND_CLAIMED && st_high(s) == stripe) {
                uint64_t tomb = st_make(KIND_TOMBSTONE, st_gen(s), 0, 0);
                if (cas64(slot, &s, tomb)) {
                    __atomic_fetch_add(&t->header->tombstones, 1, __ATOMIC_ACQ_REL);
                    dropped++;
                }
            } else if (st_kind(s) == KIND_PUBLISHED && st_klen(s) <= self->key_size) {
                /* Which stripe a published key belongs to needs its full hash. */
                unsigned long long h;
                if (hash_key(self, slot_key(slot), (Py_ssize_t)st_klen(s), &h) < 0)
                    return -1;
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                if (load_acq(slot) == s && stripe_of(self, h) == stripe)
                    counted++;
            }
        }
        int64_t have = (int64_t)load_acq(&t->stripes[stripe].live);
        int64_t delta = counted - have;
        admit_adjust(self, t, stripe, delta);
        total_delta += delta;
    }
    *dropped_out = dropped;
    *delta_out = total_delta;
    return 0;
}

/* Whether the stripe journal's words describe an operation this table
 * could have been doing: its op, tier and slot in range and its count
 * possible.  (They are segment data: a co-tenant may have written them.) */
static int
journal_valid(Core *c, uint64_t op_word, uint64_t local, int64_t before)
{
    unsigned op = (unsigned)(op_word & SHMDICT_JOURNAL_OP_MASK);
    uint64_t k = op_word >> SHMDICT_JOURNAL_TIER_SHIFT;
    if ((op != SHMDICT_JOURNAL_INSERT && op != SHMDICT_JOURNAL_DELETE) || k >= c->ntiers)
        return 0;
    Tier *t = &c->tiers[k];
    if (before < 0 || (uint64_t)before > t->capacity)
        return 0;
    if (op == SHMDICT_JOURNAL_INSERT && local == SHMDICT_JOURNAL_NO_SLOT)
        return 1;
    return local < t->nslots;
}

/* The repair of a stripe taken over from a dead (or garbage) holder:
 * settle the operation that holder was in, from its journal
 * (format.h, "The stripe journal"; the caller now holds the stripe): drop
 * its unpublished claim, and set the stripe's count in that tier to what the
 * slot says the operation achieved.  Returns 0 with *dropped (claims
 * tombstoned) and *delta (count change) set, -1 with an exception set. */
static int
repair_stripe(Core *c, uint64_t stripe, long long *dropped, long long *delta)
{
    struct shmdict_stripe *j = stripe_at(c, stripe);
    *dropped = *delta = 0;
    uint64_t op_word = load_acq(&j->journal);
    if (op_word == 0)
        return 0;                       /* it died between operations */
    uint64_t k = op_word >> SHMDICT_JOURNAL_TIER_SHIFT;
    if (k >= c->ntiers && k < SHMDICT_MAX_TIERS && refresh_tiers(c) < 0)
        return -1;
    uint64_t local = load_acq(&j->journal_slot), before_state = load_acq(&j->journal_state);
    int64_t before = (int64_t)load_acq(&j->journal_live);
    if (!journal_valid(c, op_word, local, before)) {
        if (recount_stripe(c, stripe, dropped, delta) < 0)
            return -1;
        journal_end(c, stripe);
        return 0;
    }
    Tier *t = &c->tiers[k];
    int64_t target = before;
    if ((op_word & SHMDICT_JOURNAL_OP_MASK) == SHMDICT_JOURNAL_INSERT) {
        if (local != SHMDICT_JOURNAL_NO_SLOT) {
            char *slot = t->slots + local * c->slot_size;
            uint64_t s = load_acq(slot);
            if (st_kind(s) == KIND_CLAIMED && st_high(s) == stripe) {
                /* Its claim, never published: nobody can reach it. */
                uint64_t tomb = st_make(KIND_TOMBSTONE, st_gen(s), 0, 0);
                if (cas64(slot, &s, tomb)) {
                    __atomic_fetch_add(&t->header->tombstones, 1, __ATOMIC_ACQ_REL);
                    *dropped = 1;
                }
            } else if (st_kind(s) == KIND_PUBLISHED && st_klen(s) <= c->key_size
                       && st_gen(s) == ((st_gen(before_state) + 1) & GEN_MASK)) {
                /* Published by this stripe's holder (the dead one: we hold
                 * the stripe now) iff its key is of this stripe. */
                unsigned long long h;
                if (hash_key(c, slot_key(slot), (Py_ssize_t)st_klen(s), &h) < 0)
                    return -1;
                if (stripe_of(c, h) == stripe)
                    target = before + 1;
            }
        }
    } else {
        char *slot = t->slots + local * c->slot_size;
        if (load_acq(slot) != before_state)
            target = before - 1;        /* the tombstone landed */
    }
    *delta = target - (int64_t)load_acq(&t->stripes[stripe].live);
    admit_adjust(c, t, stripe, *delta);
    journal_end(c, stripe);
    return 0;
}

/* recount_stripe(i) -> (unpublished_claims_dropped, live_count_delta): the
 * whole-table recount of one stripe, for `shmdict check` (which holds the
 * stripe). */
static PyObject *
Core_recount_stripe(Core *self, PyObject *arg)
{
    unsigned long long stripe = PyLong_AsUnsignedLongLong(arg);
    if (stripe == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    REQUIRE_OPEN(self);
    if (stripe >= self->nstripes) {
        PyErr_SetString(PyExc_IndexError, "stripe out of range");
        return NULL;
    }
    long long dropped, delta;
    if (recount_stripe(self, stripe, &dropped, &delta) < 0)
        return NULL;
    return Py_BuildValue("(LL)", dropped, delta);
}

/* ------------------------------------------------------------------------ */
/* Stripe locks: the semaphore owns the stripe, the holder word names it    */
/* ------------------------------------------------------------------------ */

/* The protocol (see stripes.py for the whole story).  Whoever holds a count
 * of the stripe's semaphore owns the stripe; the holder word only names it,
 * so that a waiter can tell a dead holder.  The word is trusted only as far
 * as it agrees with the semaphore:
 *
 *   - after our wait succeeds, the word should be 0.  If the semaphore
 *     still shows a count, ours is an extra one (a waiter took the stripe
 *     over while we were stopped between our wait and our CAS, and gave a
 *     count back when done): we drop ours, without posting, and wait again.
 *     This also brings a semaphore at 2 back to 1.
 *   - if the word names a process that holds it by takeover (TAKEOVER_BIT)
 *     and is alive, it is the waiter that took our count over: wait again.
 *   - any other word contradicts the semaphore: garbage, or a dead process.
 *     We own the stripe; we record ourselves and repair it.
 *   - a waiter whose timed wait expires takes over from a dead holder, from
 *     a stripe taken with no holder for stall_timeout (its holder is stopped
 *     or died between its wait and its CAS), and from a TAKEOVER holder that
 *     has not changed for stall_timeout (a garbage word with that bit).
 *   - every takeover first moves the stripe's takeovers count; a holder
 *     that finds another word than its own at release posts only if that
 *     count has not moved since it took the stripe (the word was garbage),
 *     and otherwise leaves the post to the taker.
 *
 * All of it runs in C, with no Python code between taking the semaphore and
 * recording ourselves (a signal handler that raises there would leak the
 * stripe); EINTR runs the handlers and retries while nothing is held
 * (PEP 475).  A per-process table of which thread holds which stripe keeps
 * a thread from releasing a stripe another thread of the process holds. */

#define TAKEOVER_BIT SHMDICT_TAKEOVER_BIT

static int
sem_value(sem_t *sem)
{
    int v = 1;
    if (sem_getvalue(sem, &v) != 0)
        return 0;
    return v;
}

/* Record that this thread holds `stripe` (holder word already written;
 * `epoch`: the stripe's takeovers count read before our CAS wrote it). */
static inline void
stripe_mark(Core *c, uint64_t stripe, uint64_t epoch)
{
    c->stripe_thread[stripe] = PyThread_get_thread_ident();
    c->stripe_epoch[stripe] = epoch;
}

static inline uint64_t
stripe_takeovers(Core *c, uint64_t stripe)
{
    return load_acq(&stripe_at(c, stripe)->takeovers);
}

/* A waiter's takeover of a stripe from its recorded holder (dead, stopped,
 * or a garbage word): count it first, so that a live holder that finds its
 * word gone at release knows the post is the taker's; then the CAS from the
 * word it saw.  On success *epoch is the count as the taker leaves it. */
static int
stripe_take_over(Core *c, uint64_t stripe, uint64_t *seen, uint64_t want, uint64_t *epoch)
{
    *epoch = __atomic_add_fetch(&stripe_at(c, stripe)->takeovers, 1, __ATOMIC_SEQ_CST);
    return cas64(&stripe_at(c, stripe)->holder, seen, want);
}

/* The post-wait step: we hold a semaphore count.  Returns 1 when we now own
 * the stripe (*repaired set when the word was garbage: then repair), 0 when
 * our count was not ours to keep (wait again). */
static int stripe_release(Core *c, uint64_t stripe);

static int
stripe_after_wait(Core *c, uint64_t stripe, int *repaired, uint64_t *epoch)
{
    uint64_t *word = &stripe_at(c, stripe)->holder;
    uint64_t me = my_id();
    *repaired = 0;
    for (int tries = 0; tries < 1000; tries++) {
        *epoch = stripe_takeovers(c, stripe);
        uint64_t h = load_acq(word);
        if (h == 0) {
            if (sem_value(c->sems[stripe]) > 0)
                return 0;                  /* an extra count: drop ours */
            if (cas64(word, &h, me))
                return 1;
            continue;
        }
        if ((h & TAKEOVER_BIT) && !is_me(h) && id_alive(h))
            return 0;                      /* taken over from us: wait again */
        /* Contradicts the semaphore (garbage, a dead or a previous
         * incarnation of our pid): we own the stripe. */
        if (cas64(word, &h, me)) {
            *repaired = 1;
            return 1;
        }
    }
    /* The word keeps changing under a count we hold: someone else is
     * writing it; give our count back and wait again. */
    sem_post(c->sems[stripe]);
    return 0;
}

static void
deadline_after(double seconds, struct timespec *ts)
{
    clock_gettime(CLOCK_REALTIME, ts);
    double whole = (double)(time_t)seconds;
    ts->tv_sec += (time_t)seconds;
    ts->tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Acquire `stripe`.  Returns RC_OK, RC_RECOVERED (taken over and repaired:
 * *dropped and *delta say what the repair did), RC_TIMEOUT (a live process
 * still held it at `deadline`, a CLOCK_MONOTONIC time, or NO_DEADLINE), or
 * RC_ERROR with an exception set (a signal handler raised, the table was
 * closed); on RC_TIMEOUT and RC_ERROR the stripe is not held.  `how`: STRIPE_WAIT; STRIPE_AFTER_WAIT
 * when the caller has just taken the bare semaphore itself;
 * STRIPE_LOOK_FIRST to look at a taken stripe's holder before the first
 * wait (a sweep that found a dead holder: a sweeper killed holding every
 * stripe left them all to the same dead process, and one poll per stripe
 * would add up past the recovery bound). */
static int
stripe_acquire(Core *c, uint64_t stripe, int how, double deadline,
               long long *dropped, long long *delta)
{
    int after_wait = how == STRIPE_AFTER_WAIT, look_first = how == STRIPE_LOOK_FIRST;
    sem_t *sem = c->sems[stripe];
    uint64_t *word = &stripe_at(c, stripe)->holder;
    uint64_t me = my_id();
    uint64_t stuck_word = 0;
    double stuck_since = -1;
    *dropped = *delta = 0;
    for (;;) {
        int got = 0, err = 0, repaired = 0;
        if (after_wait) {
            got = 1;
            after_wait = 0;
        } else {
            if (sem_trywait(sem) == 0) {
                got = 1;
            } else if (look_first) {
                look_first = 0;
                err = ETIMEDOUT;        /* look at the holder now */
            } else {
                /* One poll, cut short by a deadline still ahead. */
                double wait = c->stripe_poll;
                if (deadline > 0) {
                    double left = deadline - now_monotonic();
                    if (left > 0 && left < wait)
                        wait = left;
                }
                struct timespec ts;
                deadline_after(wait, &ts);
                Py_BEGIN_ALLOW_THREADS
                got = sem_timedwait(sem, &ts) == 0;
                err = got ? 0 : errno;
                Py_END_ALLOW_THREADS
            }
        }
        if (got) {
            if (closed_meanwhile(c)) {
                PyErr_Clear();           /* the mapping is gone: give the count back */
                sem_post(sem);
                PyErr_SetString(PyExc_ValueError, "table was closed while in use");
                return RC_ERROR;
            }
            uint64_t epoch;
            if (!stripe_after_wait(c, stripe, &repaired, &epoch))
                continue;
            stripe_mark(c, stripe, epoch);
            if (repaired) {
                if (repair_stripe(c, stripe, dropped, delta) < 0) {
                    stripe_release(c, stripe);
                    return RC_ERROR;
                }
                return RC_RECOVERED;
            }
            return RC_OK;
        }
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return RC_ERROR;
            if (closed_meanwhile(c))
                return RC_ERROR;
            continue;
        }
        if (err != ETIMEDOUT && err != EAGAIN) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return RC_ERROR;
        }
        if (PyErr_CheckSignals() < 0 || closed_meanwhile(c))
            return RC_ERROR;
        /* The wait timed out: look at the holder. */
        uint64_t h = load_acq(word);
        double now = now_monotonic();
        if (h != stuck_word || stuck_since < 0 || (h == 0 && sem_value(sem) != 0)) {
            stuck_word = h;
            stuck_since = now;
        }
        int take = 0;
        uint64_t want = me;
        if (h == 0) {
            /* Taken, yet nobody recorded: someone is between wait and CAS
             * (or release and post), or died there, or is stopped there. */
            if (now - stuck_since >= c->stall_seconds) {
                take = 1;
                want = me | TAKEOVER_BIT;
            }
        } else if (is_me(h) && c->stripe_thread[stripe] == 0) {
            take = 1;              /* a previous incarnation of our pid */
        } else if (!id_alive(h)) {
            /* Dead: its count is ours now.  The takeover bit tells a live
             * process that still believes it holds the stripe (a garbage
             * dead id was written over its word) not to post as well. */
            take = 1;
            want = me | TAKEOVER_BIT;
        } else if ((h & TAKEOVER_BIT) && now - stuck_since >= c->stall_seconds) {
            take = 1;              /* a takeover that never ends: garbage */
            want = me | TAKEOVER_BIT;
        }
        uint64_t epoch;
        if (take && stripe_take_over(c, stripe, &h, want, &epoch)) {
            stripe_mark(c, stripe, epoch);
            if (repair_stripe(c, stripe, dropped, delta) < 0) {
                stripe_release(c, stripe);
                return RC_ERROR;
            }
            return RC_RECOVERED;
        }
        if (deadline > 0 && now >= deadline && h != 0)
            return RC_TIMEOUT;      /* (an unrecorded one is taken over soon) */
    }
}

/* Release `stripe` if this thread holds it: clear the holder word, post.
 * Returns 1 if it did, 0 if this thread did not hold it (or it was taken
 * over meanwhile, in which case its taker posts).
 *
 * A word that is not ours when we release means one of two things.  We
 * were taken over (stopped past the stall timeout, or a garbage word over
 * ours looked dead): the taker posts or posted, and the count is not ours to
 * give.  Or the word is garbage and nobody took anything: left alone, the
 * count would stay taken for good, under a word that may name a live
 * process (a waiter never takes over from one), so we clear it and post.
 * The stripe's takeovers count tells them apart: every taker moves it before
 * its CAS, so it is where we left it exactly when nobody took over since
 * we took the stripe.  (The word alone cannot: 0 is also what a taker
 * leaves when it is done, and a garbage word can look like a taker's.) */
static int
stripe_release(Core *c, uint64_t stripe)
{
    if (c->stripe_thread == NULL || c->stripe_thread[stripe] != PyThread_get_thread_ident())
        return 0;
    c->stripe_thread[stripe] = 0;
    if (!c->has_view)
        return 0;
    uint64_t *word = &stripe_at(c, stripe)->holder;
    uint64_t me = my_id();
    for (int tries = 0; tries < 1000; tries++) {
        uint64_t h = load_acq(word);
        if ((h & ~TAKEOVER_BIT) != me && stripe_takeovers(c, stripe) != c->stripe_epoch[stripe])
            return 0;       /* taken over from us: the taker posts */
        if (cas64(word, &h, 0)) {
            sem_post(c->sems[stripe]);
            return 1;
        }
    }
    return 0;               /* the word keeps changing: someone else writes it */
}

static int
stripe_arg(Core *self, PyObject *arg, uint64_t *out)
{
    unsigned long long i = PyLong_AsUnsignedLongLong(arg);
    if (i == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
        return -1;
    }
    if (!identity_ready())
        return -1;
    if (self->sems == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "stripe semaphores not attached");
        return -1;
    }
    if (i >= self->nstripes) {
        PyErr_SetString(PyExc_IndexError, "stripe out of range");
        return -1;
    }
    *out = i;
    return 0;
}

/* holding_stripe(i, fn, *args) -> fn(*args), called with stripe i held:
 * taken and released here, whatever fn does, with no Python bytecode
 * between the acquire, fn's return (or its exception) and the release.  So
 * a signal handler's exception can never leave the stripe taken, which a
 * Python `try: acquire ... finally: release` cannot promise (Python 3.9
 * runs pending handlers before the finally's call). */
static PyObject *
Core_holding_stripe(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "holding_stripe(i, fn, *args) takes a stripe and a callable");
        return NULL;
    }
    uint64_t i;
    long long dropped, delta;
    if (stripe_arg(self, args[0], &i) < 0)
        return NULL;
    int r = stripe_acquire(self, i, STRIPE_WAIT, NO_DEADLINE, &dropped, &delta);
    if (r == RC_ERROR)
        return NULL;
    if (r == RC_RECOVERED)
        self->takeovers++;
    PyObject *result = PyObject_Vectorcall(args[1], args + 2, (size_t)(nargs - 2), NULL);
    stripe_release(self, i);
    return result;
}

/* holding_all_stripes(timeout, fn, *args) -> fn(*args), called with every
 * stripe held (a snapshot: no slot changes key meanwhile), all taken and
 * released here as holding_stripe does.  A stripe that a live process still
 * holds `timeout` seconds from now raises TimeoutError naming it and its
 * holder, with nothing held; dead holders are taken over as usual. */
static PyObject *
Core_holding_all_stripes(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError,
                        "holding_all_stripes(timeout, fn, *args) takes a timeout and a callable");
        return NULL;
    }
    double timeout = PyFloat_AsDouble(args[0]);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (!(timeout >= 0) || isinf(timeout)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a finite number of seconds >= 0");
        return NULL;
    }
    REQUIRE_OPEN(self);
    if (!identity_ready())
        return NULL;
    if (self->sems == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "stripe semaphores not attached");
        return NULL;
    }
    uint64_t blocked = 0;
    int r = take_all_stripes(self, now_monotonic() + timeout + 1e-9, &blocked);
    if (r == RC_ERROR)
        return NULL;
    if (r == RC_TIMEOUT) {
        uint64_t holder = load_acq(&stripe_at(self, blocked)->holder);
        PyErr_Format(PyExc_TimeoutError, "stripe %llu is held by live pid %llu and was "
                     "not released in time", (unsigned long long)blocked,
                     (unsigned long long)id_pid(holder));
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(args[1], args + 2, (size_t)(nargs - 2), NULL);
    release_all_stripes(self);
    return result;
}

/* stripe_acquire(i) and _stripe_after_wait(i): None, or (dropped, delta)
 * when the stripe was taken over from a dead (or garbage) holder and
 * repaired.  `after_wait`: the caller has just taken the bare semaphore
 * itself (tests: a process stopped right there). */
static PyObject *
stripe_take(Core *self, PyObject *arg, int after_wait)
{
    uint64_t i;
    long long dropped, delta;
    if (stripe_arg(self, arg, &i) < 0)
        return NULL;
    int r = stripe_acquire(self, i, after_wait ? STRIPE_AFTER_WAIT : STRIPE_WAIT, NO_DEADLINE,
                           &dropped, &delta);
    if (r == RC_ERROR)
        return NULL;
    if (r == RC_OK)
        Py_RETURN_NONE;
    return Py_BuildValue("(LL)", dropped, delta);
}

static PyObject *
Core_stripe_acquire(Core *self, PyObject *arg) { return stripe_take(self, arg, 0); }

static PyObject *
Core_stripe_after_wait(Core *self, PyObject *arg) { return stripe_take(self, arg, 1); }

/* stripe_release(i) -> bool: see stripe_release above. */
static PyObject *
Core_stripe_release(Core *self, PyObject *arg)
{
    unsigned long long i = PyLong_AsUnsignedLongLong(arg);
    if (i == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (i >= self->nstripes) {
        PyErr_SetString(PyExc_IndexError, "stripe out of range");
        return NULL;
    }
    return PyBool_FromLong(stripe_release(self, i));
}

/* attach_semaphores(names, poll, stall_timeout): open the stripe
 * semaphores (already opened and checked by the segment: sem_open of the
 * same name in one process maps the same semaphore) and set the recovery
 * bound, also used for the admission lock. */
static PyObject *
Core_attach_semaphores(Core *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"names", "poll", "stall_timeout", NULL};
    PyObject *names;
    double poll, stall;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!dd", kwlist, &PyList_Type, &names,
                                     &poll, &stall))
        return NULL;
    if (!(poll > 0 && stall > 0) || isinf(poll) || isinf(stall)) {
        PyErr_SetString(PyExc_ValueError, "poll and stall_timeout must be positive and finite");
        return NULL;
    }
    self->stripe_poll = poll;
    self->stall_seconds = stall;
    if (self->sems != NULL)
        Py_RETURN_NONE;
    if ((uint64_t)PyList_GET_SIZE(names) != self->nstripes) {
        PyErr_SetString(PyExc_ValueError, "one semaphore name per stripe");
        return NULL;
    }
    sem_t **sems = PyMem_Calloc(self->nstripes, sizeof *sems);
    unsigned long *threads = PyMem_Calloc(self->nstripes, sizeof *threads);
    uint64_t *epochs = PyMem_Calloc(self->nstripes, sizeof *epochs);
    if (sems == NULL || threads == NULL || epochs == NULL) {
        PyMem_Free(sems);
        PyMem_Free(threads);
        PyMem_Free(epochs);
        return PyErr_NoMemory();
    }
    for (uint64_t k = 0; k < self->nstripes; k++) {
        const char *n = PyUnicode_AsUTF8(PyList_GET_ITEM(names, k));
        sem_t *sem = n ? sem_open(n, 0) : SEM_FAILED;
        if (sem == SEM_FAILED) {
            if (n)
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, n);
            for (uint64_t j = 0; j < k; j++)
                sem_close(sems[j]);
            PyMem_Free(sems);
            PyMem_Free(threads);
            PyMem_Free(epochs);
            return NULL;
        }
        sems[k] = sem;
    }
    self->sems = sems;
    self->stripe_thread = threads;
    self->stripe_epoch = epochs;
    Py_RETURN_NONE;
}

static void
close_semaphores(Core *self)
{
    if (self->sems) {
        for (uint64_t k = 0; k < self->nstripes; k++)
            sem_close(self->sems[k]);
        PyMem_Free(self->sems);
        self->sems = NULL;
    }
    PyMem_Free(self->stripe_thread);
    self->stripe_thread = NULL;
    PyMem_Free(self->stripe_epoch);
    self->stripe_epoch = NULL;
}

/* recount_live() -> (old, new): set the global live count to the sum of
 * the stripes' counts (check's repair of a garbage count). */
static PyObject *
Core_recount_live(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    if (refresh_tiers(self) < 0)
        return NULL;
    long long old = 0, now = 0;
    for (unsigned k = 0; k < self->ntiers; k++) {
        old += (long long)admit_recount(self, &self->tiers[k]);
        now += (long long)load_acq(&self->tiers[k].header->live);
    }
    return Py_BuildValue("(LL)", old, now);
}

/* dead_stripes() -> [i]: stripes whose holder word names a dead process. */
static PyObject *
Core_dead_stripes(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    PyObject *out = PyList_New(0);
    for (uint64_t k = 0; out && k < self->nstripes; k++) {
        uint64_t h = load_acq(&stripe_at(self, k)->holder);
        if (h != 0 && !id_alive(h)) {
            PyObject *v = PyLong_FromUnsignedLongLong(k);
            if (v == NULL || PyList_Append(out, v) < 0)
                Py_CLEAR(out);
            Py_XDECREF(v);
        }
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* Owner locks: Lock layout rows and the Struct record lock                 */
/* ------------------------------------------------------------------------ */

/* A NaN timeout would wait forever (every comparison with it is false):
 * ValueError, as threading gives.  Returns 1 with the exception set. */
static int
timeout_invalid(double timeout)
{
    if (!isnan(timeout))
        return 0;
    PyErr_SetString(PyExc_ValueError, "timeout must be a number of seconds, not NaN");
    return 1;
}

/* How many times a blocking acquire looks at a held lock word (with a CPU
 * pause between looks: a few microseconds in all) before it checks the
 * holder's liveness and sleeps on the futex. */
#define LOCK_SPINS 200

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Acquire the exclusive lock whose word is `word` (word0 of slot i, or an
 * extra word of an rw lock).  The lock word holds the owner id, and
 * acquisition is a CAS of (state, 0) -> (state, me) for word0, so that it
 * fails if the slot was deleted meanwhile.  Waits sleep on the futex (low
 * 32 bits) in slices of at most 50 ms, checking between slices whether the
 * owner is still alive and whether a signal (Ctrl-C) arrived.  Returns
 * RC_OK, RC_RECOVERED, RC_TIMEOUT or RC_STALE; RC_ERROR with the exception
 * set when a signal handler raised or the table was closed meanwhile. */
static int
owner_acquire(Core *c, uint64_t i, uint64_t s, int blocking, double timeout)
{
    char *slot = slot_at(c, i);
    uint64_t *word = word0_of(slot);
    uint64_t me = my_id();
    double deadline = timeout >= 0 ? now_monotonic() + timeout : 0;
    int recovered = 0;
    unsigned spins = 0;
    for (;;) {
        uint64_t cur;
        if (load_acq(slot) != s)
            return RC_STALE;
        cur = load_acq(word);
        if (id_pid(cur) == 0) {
            /* Free (the waiters bit may be set): take it, keeping no bit. */
            if (cas_pair(slot, s, cur, s, me | (cur & WAITERS_BIT), NULL))
                return recovered ? RC_RECOVERED : RC_OK;
            continue;
        }
        if (blocking && spins < LOCK_SPINS) {
            /* Held: most holders let go within a microsecond or two (a row
             * lock guards a short update), so watch the word briefly before
             * the expensive steps: the liveness check reads /proc, the
             * sleep is two system calls.  Bounded, and only reads. */
            spins++;
            cpu_relax();
            continue;
        }
        if (!id_alive(cur)) {
            /* The owner died holding it: inherit, and say so. */
            if (cas_pair(slot, s, cur, s, me | (cur & WAITERS_BIT), NULL))
                return RC_RECOVERED;
            continue;
        }
        if (!blocking)
            return RC_TIMEOUT;
        double slice = 0.05;
        if (timeout >= 0) {
            double left = deadline - now_monotonic();
            if (left <= 0)
                return RC_TIMEOUT;
            if (left < slice)
                slice = left;
        }
        /* Announce a waiter so the releaser wakes us, then sleep. */
        if (!(cur & WAITERS_BIT)) {
            if (!cas_pair(slot, s, cur, s, cur | WAITERS_BIT, NULL))
                continue;
            cur |= WAITERS_BIT;
        }
        Py_BEGIN_ALLOW_THREADS
        futex_wait(word, (uint32_t)cur, slice);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0 || closed_meanwhile(c))
            return RC_ERROR;
    }
}

static int
owner_release(Core *c, uint64_t i, uint64_t s)
{
    if (!c->has_view)       /* closed while we waited: nothing to touch */
        return RC_STALE;
    char *slot = slot_at(c, i);
    uint64_t *word = word0_of(slot);
    for (;;) {
        if (load_acq(slot) != s)
            return RC_STALE;
        uint64_t cur = load_acq(word);
        if (id_pid(cur) == 0 || !is_me(cur))
            return RC_NOT_OWNER;
        if (cas_pair(slot, s, cur, s, 0, NULL)) {
            if (cur & WAITERS_BIT)
                futex_wake_all(word);
            return RC_OK;
        }
    }
}

/* lock_acquire(slot, state, blocking, timeout) -> code */
static PyObject *
Core_lock_acquire(Core *self, PyObject *args)
{
    unsigned long long i, s;
    int blocking;
    double timeout;
    if (!PyArg_ParseTuple(args, "KKpd", &i, &s, &blocking, &timeout))
        return NULL;
    if (timeout_invalid(timeout))
        return NULL;
    REQUIRE_OPEN(self);
    if (parse_slot(self, i) < 0)
        return NULL;
    int r = owner_acquire(self, i, s, blocking, timeout);
    if (r == RC_ERROR)
        return NULL;
    return PyLong_FromLong(r);
}

static PyObject *
Core_lock_release(Core *self, PyObject *args)
{
    unsigned long long i, s;
    if (!PyArg_ParseTuple(args, "KK", &i, &s))
        return NULL;
    REQUIRE_OPEN(self);
    if (parse_slot(self, i) < 0)
        return NULL;
    return PyLong_FromLong(owner_release(self, i, s));
}

/* lock_owner(slot, state) -> pid of the holder (0 when free), or -1 when the
 * slot changed. */
static PyObject *
Core_lock_owner(Core *self, PyObject *args)
{
    unsigned long long i, s;
    if (!PyArg_ParseTuple(args, "KK", &i, &s))
        return NULL;
    REQUIRE_OPEN(self);
    if (parse_slot(self, i) < 0)
        return NULL;
    int64_t v;
    if (!read_pair(slot_at(self, i), s, &v))
        return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(id_pid((uint64_t)v));
}

/* ------------------------------------------------------------------------ */
/* Shared (reader) side of rw locks                                         */
/* ------------------------------------------------------------------------ */

/* An rw lock keeps the writer in word0 and up to extra_size/8 readers in the
 * extra area, one owner id per reader.  A reader takes a free reader cell,
 * then checks that no writer holds word0; a writer takes word0, then waits
 * for the reader cells to empty.  Dead readers' cells are cleared by whoever
 * waits on them. */

/* Take a reader cell: RC_OK or RC_RECOVERED (a dead writer was cleared),
 * RC_TIMEOUT, RC_STALE, or RC_ERROR with an exception set. */
static int
reader_acquire(Core *c, uint64_t i, uint64_t s, int blocking, double timeout)
{
    char *slot = slot_at(c, i);
    uint64_t *writer = word0_of(slot);
    uint64_t *cells = (uint64_t *)slot_extra(c, slot);
    uint64_t ncells = c->extra_size / 8;
    uint64_t me = my_id();
    double deadline = timeout >= 0 ? now_monotonic() + timeout : 0;
    int recovered = 0;
    for (;;) {
        if (load_acq(slot) != s)
            return RC_STALE;
        uint64_t w = load_acq(writer);
        if (id_pid(w) != 0 && !id_alive(w)) {
            /* The writer died mid-write: clear it; what it guarded may be
             * half-written, so the reader is told. */
            if (cas_pair(slot, s, w, s, 0, NULL)) {
                recovered = 1;
                /* Nobody holds it now: wake whoever slept on the dead
                 * writer, and keep no waiters bit naming nobody. */
                if (w & WAITERS_BIT)
                    futex_wake_all(writer);
            }
            continue;
        }
        if (id_pid(w) == 0) {
            for (uint64_t k = 0; k < ncells; k++) {
                uint64_t e = 0;
                if (cas64(&cells[k], &e, me)) {
                    __atomic_thread_fence(__ATOMIC_SEQ_CST);
                    uint64_t w2 = load_acq(writer);
                    if (id_pid(w2) == 0 && load_acq(slot) == s)
                        return recovered ? RC_RECOVERED : RC_OK;
                    store_rel(&cells[k], 0);   /* a writer came: back off */
                    break;
                }
                if (!id_alive(e)) {            /* a dead reader's cell */
                    cas64(&cells[k], &e, 0);
                }
            }
        }
        if (!blocking)
            return RC_TIMEOUT;
        double slice = 0.002;
        if (timeout >= 0) {
            double left = deadline - now_monotonic();
            if (left <= 0)
                return RC_TIMEOUT;
            if (left < slice)
                slice = left;
        }
        /* Waiting on a writer: set the waiters bit, as owner_acquire does,
         * or the writer's release (which wakes only when it is set) leaves
         * us asleep for the whole slice. */
        if (id_pid(w) != 0 && !(w & WAITERS_BIT)) {
            if (!cas_pair(slot, s, w, s, w | WAITERS_BIT, NULL))
                continue;
            w |= WAITERS_BIT;
        }
        Py_BEGIN_ALLOW_THREADS
        if (id_pid(w) != 0)
            futex_wait(writer, (uint32_t)w, slice * 25);
        else
            sleep_seconds(slice);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0 || closed_meanwhile(c))
            return RC_ERROR;
    }
}

static int
reader_release(Core *c, uint64_t i, uint64_t s)
{
    char *slot = slot_at(c, i);
    uint64_t *cells = (uint64_t *)slot_extra(c, slot);
    uint64_t ncells = c->extra_size / 8;
    uint64_t me = my_id();
    if (load_acq(slot) != s)
        return RC_STALE;
    for (uint64_t k = 0; k < ncells; k++) {
        uint64_t e = me;
        if (cas64(&cells[k], &e, 0))
            return RC_OK;
    }
    return RC_NOT_OWNER;
}

/* Link / unlink a HeldWait (the GIL held). */
static void
held_wait_push(Core *c, HeldWait *w, uint64_t i, uint64_t s)
{
    w->slot = i;
    w->state = s;
    w->released = 0;
    w->next = c->held_waits;
    c->held_waits = w;
}

static void
held_wait_pop(Core *c, HeldWait *w)
{
    for (HeldWait **p = &c->held_waits; *p != NULL; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            return;
        }
    }
}

static int wait_readers_loop(Core *c, uint64_t i, uint64_t s, double deadline);

/* Wait until no live reader holds the lock (the caller holds the writer
 * word).  Returns RC_OK or RC_TIMEOUT; RC_ERROR with an exception set.
 * While it waits, a close of the table releases the writer word for it
 * (HeldWait); the caller's owner_release after RC_ERROR is then a no-op. */
static int
wait_readers_gone(Core *c, uint64_t i, uint64_t s, double deadline)
{
    HeldWait held;
    held_wait_push(c, &held, i, s);
    int r = wait_readers_loop(c, i, s, deadline);
    held_wait_pop(c, &held);
    return r;
}

static int
wait_readers_loop(Core *c, uint64_t i, uint64_t s, double deadline)
{
    char *slot = slot_at(c, i);
    uint64_t *cells = (uint64_t *)slot_extra(c, slot);
    uint64_t ncells = c->extra_size / 8;
    for (unsigned long round = 0;; round++) {
        int busy = 0;
        for (uint64_t k = 0; k < ncells; k++) {
            uint64_t e = load_acq(&cells[k]);
            if (e == 0)
                continue;
            if (!id_alive(e)) {
                cas64(&cells[k], &e, 0);
                continue;
            }
            busy = 1;
        }
        if (!busy)
            return RC_OK;
        if (deadline > 0 && now_monotonic() >= deadline)
            return RC_TIMEOUT;
        Py_BEGIN_ALLOW_THREADS
        if (round < 100)
            sched_yield();
        else
            sleep_seconds(0.0005);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0 || closed_meanwhile(c))
            return RC_ERROR;
    }
}

/* rw_readers(slot, state) -> list of reader pids */
static PyObject *
Core_rw_readers(Core *self, PyObject *args)
{
    unsigned long long i, s;
    if (!PyArg_ParseTuple(args, "KK", &i, &s))
        return NULL;
    REQUIRE_OPEN(self);
    if (parse_slot(self, i) < 0)
        return NULL;
    uint64_t *cells = (uint64_t *)slot_extra(self, slot_at(self, i));
    PyObject *out = PyList_New(0);
    for (uint64_t k = 0; out && k < self->extra_size / 8; k++) {
        uint64_t e = load_acq(&cells[k]);
        if (e != 0) {
            PyObject *p = PyLong_FromUnsignedLongLong(id_pid(e));
            if (p == NULL || PyList_Append(out, p) < 0) {
                Py_XDECREF(p);
                Py_CLEAR(out);
                break;
            }
            Py_DECREF(p);
        }
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* Row locks by key (the LockHandle hot path)                               */
/* ------------------------------------------------------------------------ */

static int lock_take(Core *self, PyObject *key, int blocking, double timeout, int shared,
                     uint64_t *fence);
static int lock_give(Core *self, PyObject *key, int shared);

/* key_acquire(key, blocking, timeout, shared) -> (code, fence): resolve the
 * key through the cache (creating it), take its lock (rw tables: the shared
 * or the exclusive side), and look again if the slot changed meanwhile.
 * `fence` is the exclusive holder's fencing token (0 when not taken, or for
 * the shared side).  The work is lock_take's (the handle types' section). */
static PyObject *
Core_key_acquire(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "key_acquire(key, blocking, timeout, shared)");
        return NULL;
    }
    int blocking = PyObject_IsTrue(args[1]);
    double timeout = PyFloat_AsDouble(args[2]);
    int shared = PyObject_IsTrue(args[3]);
    if (blocking < 0 || shared < 0 || (timeout == -1.0 && PyErr_Occurred()))
        return NULL;
    if (timeout_invalid(timeout))
        return NULL;
    uint64_t fence;
    int code = lock_take(self, args[0], blocking, timeout, shared, &fence);
    if (code == RC_ERROR)
        return NULL;
    return Py_BuildValue("(iK)", code, (unsigned long long)fence);
}

/* key_release(key, shared) -> code (RC_NOT_OWNER when missing or not ours). */
static PyObject *
Core_key_release(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "key_release(key, shared)");
        return NULL;
    }
    int shared = PyObject_IsTrue(args[1]);
    if (shared < 0)
        return NULL;
    int code = lock_give(self, args[0], shared);
    if (code == RC_ERROR)
        return NULL;
    return PyLong_FromLong(code);
}

/* ------------------------------------------------------------------------ */
/* Struct records: [lock word0] + extra = [seq | copy 0 | copy 1]           */
/* ------------------------------------------------------------------------ */

/* format.h, "A Struct slot's extra area": two copies of the record and a
 * sequence word saying which is current.  A writer fills the other copy
 * and publishes it with one release store, so a writer killed mid-copy
 * (SIGKILL lands anywhere) leaves the current copy whole, and readers
 * never wait for writers: nothing is ever torn, nothing needs repair. */
#define RECORD_WRITING  SHMDICT_RECORD_WRITING
#define RECORD_CURRENT  SHMDICT_RECORD_CURRENT

/* Bytes of one copy of a record (require_records checked the shape). */
static inline uint64_t record_bytes(Core *c) { return (c->extra_size - 8) / 2; }

/* Copy `k` (0 or 1) of the record whose sequence word is `seq`. */
static inline uint64_t *
record_words(Core *c, uint64_t *seq, uint64_t k)
{
    return seq + 1 + (k & 1) * (record_bytes(c) / 8);
}

/* Whether a copy read while seq went from `before` to `after` is one whole
 * write: no later writer started on the copy read (it starts at the first
 * odd seq whose CURRENT is the other copy: before + 3 from an even seq,
 * before + 2 from an odd one).  Unsigned: a seq that went backwards (the
 * word was overwritten) is not kept either. */
static inline int
record_stable(uint64_t before, uint64_t after)
{
    return after - before <= 2 - (before & RECORD_WRITING);
}

/* How long a lock-free record copy keeps trying before giving up. */
#define RECORD_COPY_SECONDS 0.05

/* Copy slot i's current record into a new bytes object.  Lock-free: copy
 * the current copy between two loads of seq, and keep it if it stayed
 * stable (record_stable); `force` keeps the first copy (the caller holds
 * the record lock, so no writer can be filling the current copy).
 * Returns RC_OK (*out set), RC_STALE (the slot changed), or RC_ERROR with
 * an exception set: TornRecord when writers completed writes faster than
 * the copy could be taken, every time (the Python layer then reads under
 * the record lock). */
static int
record_copy(Core *self, uint64_t i, uint64_t s, int force, PyObject **out)
{
    char *slot = slot_at(self, i);
    uint64_t *seq = (uint64_t *)slot_extra(self, slot);
    uint64_t nwords = record_bytes(self) / 8;
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(nwords * 8));
    if (bytes == NULL)
        return -1;
    /* Bounded in time as well as in count: on a loaded host each yield may
     * cost a scheduler slice, and 1,000 of them were once 15 s.  After
     * RECORD_COPY_SECONDS the caller reads under the record lock instead. */
    double give_up = 0;
    for (unsigned attempt = 0; attempt < 1000; attempt++) {
        if (attempt == 8)
            give_up = now_monotonic() + RECORD_COPY_SECONDS;
        if (attempt >= 8) {
            if (attempt > 8 && now_monotonic() > give_up)
                break;
            sched_yield();               /* let the writers' process run */
        }
        uint64_t before = load_acq(seq);
        /* Copy word by word with relaxed atomic loads (no data race). */
        uint64_t *src = record_words(self, seq, (before & RECORD_CURRENT) ? 1 : 0);
        uint64_t *dst = (uint64_t *)PyBytes_AS_STRING(bytes);
        for (uint64_t k = 0; k < nwords; k++)
            dst[k] = __atomic_load_n(&src[k], __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (force || record_stable(before, __atomic_load_n(seq, __ATOMIC_RELAXED))) {
            if (load_acq(slot) != s) {
                Py_DECREF(bytes);
                return RC_STALE;
            }
            *out = bytes;
            return RC_OK;
        }
    }
    Py_DECREF(bytes);
    CoreState *st = core_state();
    if (st != NULL)
        PyErr_SetString(st->TornRecord, "record kept changing while it was read");
    return RC_ERROR;
}

/* Write a record into slot i: mark WRITING, fill the copy that is not
 * current, publish it (one release store that clears WRITING, flips
 * CURRENT and counts the write).  The caller holds the record lock (word0),
 * so it is the only writer; a WRITING bit left by a writer that died
 * mid-copy is simply taken over: that writer was filling the same
 * non-current copy, which is filled again here. */
static int
record_store(Core *self, uint64_t i, uint64_t s, const void *data)
{
    char *slot = slot_at(self, i);
    uint64_t *seq = (uint64_t *)slot_extra(self, slot);
    uint64_t cur = load_acq(word0_of(slot));
    if (load_acq(slot) != s)
        return RC_STALE;
    if (id_pid(cur) == 0 || !is_me(cur))
        return RC_NOT_OWNER;
    uint64_t writing = load_acq(seq) | RECORD_WRITING;
    __atomic_store_n(seq, writing, __ATOMIC_RELAXED);
    /* Orders the store above before the copy's stores: a reader that sees
     * any of them (and fences) sees WRITING or later. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    uint64_t *dst = record_words(self, seq, (writing & RECORD_CURRENT) ? 0 : 1);
    for (uint64_t k = 0; k < record_bytes(self) / 8; k++) {
        uint64_t w;
        memcpy(&w, (const char *)data + 8 * k, 8);
        __atomic_store_n(&dst[k], w, __ATOMIC_RELAXED);
    }
    store_rel(seq, writing + 1);       /* the copy is complete before this */
    return RC_OK;
}

static int
require_records(Core *self)
{
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
        return -1;
    }
    if (!identity_ready())
        return -1;
    if (self->extra_size < 24 || (self->extra_size - 8) % 16 != 0) {
        PyErr_SetString(PyExc_ValueError, "not a record table");
        return -1;
    }
    return 0;
}

/* record_read(slot, state, force=False) -> bytes | None (slot changed).
 * Raises TornRecord when writers kept completing writes faster than the
 * record could be copied, so the Python layer can take the record lock
 * and read with force=True. */
static PyObject *
Core_record_read(Core *self, PyObject *args)
{
    unsigned long long i, s;
    int force = 0;
    if (!PyArg_ParseTuple(args, "KK|p", &i, &s, &force))
        return NULL;
    if (require_records(self) < 0 || parse_slot(self, i) < 0)
        return NULL;
    PyObject *out = NULL;
    int r = record_copy(self, i, s, force, &out);
    if (r == RC_OK)
        return out;
    if (r == RC_STALE)
        Py_RETURN_NONE;
    return NULL;
}

/* record_get(key) -> bytes | None (no such key): read() by key, through the
 * key cache, never creating. */
static PyObject *
Core_record_get(Core *self, PyObject *key)
{
    if (require_records(self) < 0)
        return NULL;
    for (int attempt = 0; attempt < 1000000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast(self, key, 0, attempt == 0, &i, &s);
        if (r < 0)
            return NULL;
        if (r == 0)
            Py_RETURN_NONE;
        PyObject *out = NULL;
        r = record_copy(self, i, s, 0, &out);
        if (r == RC_OK)
            return out;
        if (r == RC_ERROR)
            return NULL;
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return NULL;
}

/* record_begin(key) -> (slot, state, recovered, bytes): take the record lock
 * of `key` (creating the key), waiting as long as it takes (Ctrl-C
 * interrupts), and copy the record.  When the previous holder died inside
 * its update, `recovered` is true and the record is first made readable
 * again around what it holds.  Finish with record_commit. */
static PyObject *
Core_record_begin(Core *self, PyObject *key)
{
    if (require_records(self) < 0)
        return NULL;
    for (int attempt = 0; attempt < 1000000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast(self, key, 1, attempt == 0, &i, &s);
        if (r < 0)
            return NULL;
        int code = owner_acquire(self, i, s, 1, -1.0);
        if (code == RC_ERROR)
            return NULL;
        if (code == RC_STALE)
            continue;
        PyObject *data = NULL;
        r = record_copy(self, i, s, 1, &data);
        if (r == RC_OK && code == RC_RECOVERED)
            r = record_store(self, i, s, PyBytes_AS_STRING(data));
        if (r != RC_OK) {
            Py_XDECREF(data);
            owner_release(self, i, s);
            if (r == RC_ERROR)
                return NULL;
            continue;
        }
        /* Built directly, not by Py_BuildValue (which parses its format on
         * every call): update()'s round trip is the verb users time. */
        PyObject *t = PyTuple_New(4);
        PyObject *a = PyLong_FromUnsignedLongLong(i), *b = PyLong_FromUnsignedLongLong(s);
        if (t == NULL || a == NULL || b == NULL) {
            Py_XDECREF(t); Py_XDECREF(a); Py_XDECREF(b);
            Py_DECREF(data);
            owner_release(self, i, s);
            return NULL;
        }
        PyTuple_SET_ITEM(t, 0, a);
        PyTuple_SET_ITEM(t, 1, b);
        PyTuple_SET_ITEM(t, 2, Py_NewRef(code == RC_RECOVERED ? Py_True : Py_False));
        PyTuple_SET_ITEM(t, 3, data);
        return t;
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return NULL;
}

/* record_commit(slot, state, data | None) -> code: write the record (unless
 * None: the update was abandoned) and release the record lock. */
static PyObject *
Core_record_commit(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long i, s;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "record_commit(slot, state, data)");
        return NULL;
    }
    /* By digit mask (a state word above 2**62 takes the checked conversion's
     * slow path): a wrong value cannot hurt, the slot index is range-checked
     * and a state that is not the slot's is RC_STALE. */
    if (!PyLong_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "record_commit(slot, state, data): ints");
        return NULL;
    }
    i = PyLong_AsUnsignedLongLongMask(args[0]);
    s = PyLong_AsUnsignedLongLongMask(args[1]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *data = args[2];
    if (require_records(self) < 0 || parse_slot(self, i) < 0)
        return NULL;
    int r = RC_OK;
    if (data != Py_None) {
        if (!PyBytes_Check(data) || (uint64_t)PyBytes_GET_SIZE(data) != record_bytes(self)) {
            owner_release(self, i, s);
            PyErr_SetString(PyExc_ValueError, "record has the wrong size");
            return NULL;
        }
        r = record_store(self, i, s, PyBytes_AS_STRING(data));
    }
    int released = owner_release(self, i, s);
    return PyLong_FromLong(r != RC_OK ? r : released);
}

/* ------------------------------------------------------------------------ */
/* Handle types: the hot methods of shared-memory handles, in C             */
/* ------------------------------------------------------------------------ */

/* `with locks[key]:` used to run BaseTable.get -> _touch -> a new Python
 * LockHandle -> acquire (Python) -> key_acquire (C), and the same back out:
 * ten thousand instructions for one compare-and-swap each way.  Here the
 * handle classes stay Python classes (shmdict.handles' LockHandle and
 * CounterHandle, subclassed in the shm backend with one more slot, `_core`),
 * so that isinstance, the rare methods (acquire_async, read(), write(),
 * lease_lost, _took's OwnerDiedWarning) and the Redis backend are unchanged;
 * what changes is that bind_lock_handle / bind_counter_handle install C
 * method descriptors on the subclass (and `get` / `__getitem__` on the
 * table class).  A C method reads and writes the instance's __slots__ at
 * the offsets of their member descriptors, found once at bind time, and on
 * the common path (the lock free, the counter's slot cached) neither
 * releases the GIL nor calls Python.
 *
 * The offsets are process-wide statics: one handle class per kind is bound
 * (binding another class is refused, see already_bound).  A method descriptor checks that
 * `self` is an instance of the class it was made for, so the offsets are
 * never applied to an object of another layout. */

#include <structmember.h>

static PyTypeObject CoreType;

typedef struct {
    PyTypeObject *cls;                  /* the bound handle class (strong ref) */
    Py_ssize_t table, key, core;        /* every handle                        */
    Py_ssize_t shared, recovered, fence, holding, gate;   /* lock handles     */
} HandleSlots;

static HandleSlots lock_slots, counter_slots;
static PyObject *str_core, *str_took, *str_release_slow;   /* interned names */

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

/* Replace a slot's value with a new reference to v (steal: takes v's). */
static inline void
slot_steal(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(o, off);
    SLOT(o, off) = v;
    Py_XDECREF(old);
}

static inline void
slot_set(PyObject *o, Py_ssize_t off, PyObject *v)
{
    slot_steal(o, off, Py_NewRef(v));
}

/* The offset of the writable object slot `name` of cls (a __slots__ entry:
 * a member descriptor of type T_OBJECT_EX), or -1 with TypeError set. */
static Py_ssize_t
slot_offset(PyTypeObject *cls, const char *name)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)cls, name);
    if (d == NULL)
        return -1;
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY) && m->offset > 0)
            off = m->offset;
    }
    Py_DECREF(d);
    if (off < 0)
        PyErr_Format(PyExc_TypeError, "%.100s.%s is not a __slots__ entry",
                     cls->tp_name, name);
    return off;
}

/* Put C functions on a class as method descriptors (self checked by type). */
static int
install_methods(PyTypeObject *cls, PyMethodDef *defs)
{
    for (PyMethodDef *def = defs; def->ml_name; def++) {
        PyObject *descr = PyDescr_NewMethod(cls, def);
        if (descr == NULL)
            return -1;
        int r = PyObject_SetAttrString((PyObject *)cls, def->ml_name, descr);
        Py_DECREF(descr);
        if (r < 0)
            return -1;
    }
    return 0;
}

/* The offsets are the bound class's: the methods already installed on it
 * apply them to its instances, so another class may never replace it (a
 * second bind of the same class is a no-op rebind).  1 with TypeError set
 * when another class is bound. */
static int
already_bound(const HandleSlots *hs, PyTypeObject *cls)
{
    if (hs->cls == NULL || hs->cls == cls)
        return 0;
    PyErr_Format(PyExc_TypeError, "%.100s is already bound; %.100s cannot be",
                 hs->cls->tp_name, cls->tp_name);
    return 1;
}

/* The Core of a handle: its `_core` slot, filled from `_table._core` the
 * first time (a handle made by the Python constructor has none).  Borrowed
 * (the slot keeps it), or NULL with an exception set. */
static Core *
handle_core(PyObject *self, const HandleSlots *hs)
{
    PyObject *c = SLOT(self, hs->core);
    if (c != NULL && Py_IS_TYPE(c, &CoreType))
        return (Core *)c;
    PyObject *table = SLOT(self, hs->table);
    if (table == NULL) {
        PyErr_SetString(PyExc_AttributeError, "handle has no table");
        return NULL;
    }
    c = PyObject_GetAttr(table, str_core);
    if (c == NULL)
        return NULL;
    if (!Py_IS_TYPE(c, &CoreType)) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_TypeError, "handle's table has no shared-memory core");
        return NULL;
    }
    slot_steal(self, hs->core, c);
    return (Core *)c;
}

static PyObject *
handle_key(PyObject *self, const HandleSlots *hs)
{
    PyObject *key = SLOT(self, hs->key);
    if (key == NULL)
        PyErr_SetString(PyExc_AttributeError, "handle has no key");
    return key;
}

/* --- the row lock by key: what key_acquire / key_release and the handles share */

/* Take `key`'s lock (creating the key): the rw side `shared`, waiting as
 * owner_acquire does; looks again when the slot changed meanwhile.  Returns
 * RC_OK / RC_RECOVERED (with *fence, the exclusive holder's fencing token,
 * else 0), RC_TIMEOUT, or RC_ERROR with an exception set. */
static int
lock_take(Core *self, PyObject *key, int blocking, double timeout, int shared,
          uint64_t *fence)
{
    *fence = 0;
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
        return RC_ERROR;
    }
    if (!identity_ready())
        return RC_ERROR;
    int rw = self->extra_size > 0;
    for (int attempt = 0; attempt < 1000000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast(self, key, 1, attempt == 0, &i, &s);
        if (r < 0)
            return RC_ERROR;
        int code;
        if (rw && shared) {
            code = reader_acquire(self, i, s, blocking, timeout);
        } else {
            double deadline = timeout >= 0 ? now_monotonic() + timeout : 0;
            code = owner_acquire(self, i, s, blocking, timeout);
            if (rw && (code == RC_OK || code == RC_RECOVERED)) {
                int c2 = wait_readers_gone(self, i, s, blocking ? deadline : now_monotonic());
                if (c2 != RC_OK) {
                    owner_release(self, i, s);
                    code = c2;
                }
            }
        }
        if (code == RC_ERROR)
            return RC_ERROR;
        if (code != RC_STALE) {
            /* A fencing token for the new exclusive holder: the table's
             * counter, taken while holding the lock, so each holder of a key
             * gets a larger one than every holder before it. */
            if ((code == RC_OK || code == RC_RECOVERED) && !(rw && shared))
                *fence = __atomic_add_fetch(&self->header->fence, 1, __ATOMIC_ACQ_REL);
            return code;
        }
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return RC_ERROR;
}

/* Release `key`'s lock (the rw side `shared`): RC_OK, RC_NOT_OWNER (missing,
 * or not this process's), RC_STALE, or RC_ERROR with an exception set. */
static int
lock_give(Core *self, PyObject *key, int shared)
{
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
        return RC_ERROR;
    }
    if (!identity_ready())
        return RC_ERROR;
    uint64_t i, s;
    int r = resolve_fast(self, key, 0, 1, &i, &s);
    if (r < 0)
        return RC_ERROR;
    if (r == 0)
        return RC_NOT_OWNER;
    int rw = self->extra_size > 0;
    return (rw && shared) ? reader_release(self, i, s) : owner_release(self, i, s);
}

/* --- LockHandle methods */

static int
lh_shared(PyObject *self)
{
    PyObject *v = SLOT(self, lock_slots.shared);
    if (v == NULL || v == Py_False)
        return 0;
    if (v == Py_True)
        return 1;
    return PyObject_IsTrue(v);
}

/* acquire(blocking, timeout) of a handle: 1 taken, 0 not, -1 error.  The
 * common outcome (taken, the lock was free or properly released) is
 * recorded here; a recovered lock (OwnerDiedWarning) and a timeout go
 * through the Python class's _took, as before. */
static int
lh_take(PyObject *self, int blocking, double timeout)
{
    Core *c = handle_core(self, &lock_slots);
    if (c == NULL)
        return -1;
    PyObject *key = handle_key(self, &lock_slots);
    int shared = lh_shared(self);
    if (key == NULL || shared < 0)
        return -1;
    uint64_t fence;
    int code = lock_take(c, key, blocking, timeout, shared, &fence);
    if (code == RC_ERROR)
        return -1;
    PyObject *f = PyLong_FromUnsignedLongLong(fence);
    if (f == NULL) {
        if (code == RC_OK || code == RC_RECOVERED)
            lock_give(c, key, shared);          /* not recorded: not held */
        return -1;
    }
    if (code == RC_OK) {
        slot_set(self, lock_slots.recovered, Py_False);
        slot_set(self, lock_slots.holding, Py_True);
        slot_steal(self, lock_slots.fence, f);
        return 1;
    }
    PyObject *pair = Py_BuildValue("(iN)", code, f);
    if (pair == NULL)
        return -1;
    PyObject *r = PyObject_CallMethodOneArg(self, str_took, pair);
    Py_DECREF(pair);
    if (r == NULL)
        return -1;
    int taken = PyObject_IsTrue(r);
    Py_DECREF(r);
    return taken;
}

/* release(): RC_OK, or the Python class's _release_slow (an asyncio hold's
 * release, and the NotOwner error with its message). */
static PyObject *
lh_release(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    slot_set(self, lock_slots.holding, Py_False);
    PyObject *gate = SLOT(self, lock_slots.gate);
    if (gate == NULL || gate == Py_None) {
        Core *c = handle_core(self, &lock_slots);
        if (c == NULL)
            return NULL;
        PyObject *key = handle_key(self, &lock_slots);
        int shared = lh_shared(self);
        if (key == NULL || shared < 0)
            return NULL;
        int code = lock_give(c, key, shared);
        if (code == RC_ERROR)
            return NULL;
        if (code == RC_OK)
            Py_RETURN_NONE;
    }
    return PyObject_CallMethodNoArgs(self, str_release_slow);
}

static PyObject *
lh_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args; (void)nargs;
    return lh_release(self, NULL);
}

static PyObject *
lh_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lh_take(self, 1, -1.0) < 0)
        return NULL;
    return Py_NewRef(self);
}

/* acquire(blocking=True, timeout=-1) -> bool, with threading.Lock's checks
 * and messages (shmdict.handles._check_timeout). */
static PyObject *
lh_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *blocking_o = NULL, *timeout_o = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "acquire(blocking=True, timeout=-1)");
        return NULL;
    }
    if (nargs > 0) blocking_o = args[0];
    if (nargs > 1) timeout_o = args[1];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        PyObject **dst = NULL;
        if (PyUnicode_CompareWithASCIIString(name, "blocking") == 0)
            dst = &blocking_o;
        else if (PyUnicode_CompareWithASCIIString(name, "timeout") == 0)
            dst = &timeout_o;
        if (dst == NULL || *dst != NULL) {
            PyErr_Format(PyExc_TypeError, "acquire() got an unexpected or repeated "
                         "keyword argument '%U'", name);
            return NULL;
        }
        *dst = args[nargs + k];
    }
    int blocking = blocking_o ? PyObject_IsTrue(blocking_o) : 1;
    if (blocking < 0)
        return NULL;
    double timeout = -1.0;
    if (timeout_o != NULL) {
        timeout = PyFloat_AsDouble(timeout_o);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (isnan(timeout)) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a number, not NaN");
        return NULL;
    }
    if (timeout != -1.0) {
        if (!blocking) {
            PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
            return NULL;
        }
        if (timeout < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "timeout value must be a non-negative number or -1");
            return NULL;
        }
    }
    int r = lh_take(self, blocking, timeout);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* held_by_me / locked in C too: a read of the lock word through the cache. */
static int
lh_word(PyObject *self, uint64_t *word, uint64_t *slot_i, uint64_t *state, Core **core)
{
    Core *c = handle_core(self, &lock_slots);
    if (c == NULL)
        return -1;
    PyObject *key = handle_key(self, &lock_slots);
    if (key == NULL)
        return -1;
    if (!c->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
        return -1;
    }
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint64_t i, s;
        int r = resolve_fast(c, key, 0, attempt == 0, &i, &s);
        if (r <= 0)
            return r;
        int64_t v;
        if (read_pair(slot_at(c, i), s, &v)) {
            *word = (uint64_t)v;
            *slot_i = i;
            *state = s;
            *core = c;
            return 1;
        }
    }
    return 0;
}

static PyObject *
lh_locked(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t w, i, s;
    Core *c;
    int r = lh_word(self, &w, &i, &s, &c);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r == 1 && id_pid(w) != 0);
}

static PyObject *
lh_held_by_me(PyObject *self, void *Py_UNUSED(closure))
{
    uint64_t w, i, s;
    Core *c;
    int shared = lh_shared(self);
    if (shared < 0)
        return NULL;
    int r = lh_word(self, &w, &i, &s, &c);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_FALSE;
    if (!(shared && c->extra_size > 0))
        return PyBool_FromLong(id_pid(w) != 0 && is_me(w));
    uint64_t *cells = (uint64_t *)slot_extra(c, slot_at(c, i));
    for (uint64_t k = 0; k < c->extra_size / 8; k++) {
        uint64_t e = load_acq(&cells[k]);
        if (e != 0 && is_me(e))
            Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyMethodDef lock_handle_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lh_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool: take the lock, as threading.Lock."},
    {"release", (PyCFunction)lh_release, METH_NOARGS,
     "release(): NotOwner (a RuntimeError) if this process does not hold it."},
    {"__enter__", (PyCFunction)lh_enter, METH_NOARGS, "acquire(); returns the handle."},
    {"__exit__", (PyCFunction)(void (*)(void))lh_exit, METH_FASTCALL, "release()."},
    {"locked", (PyCFunction)lh_locked, METH_NOARGS,
     "locked() -> bool: whether anyone holds the lock exclusively."},
    {NULL}
};

/* --- the lock table's handle factory: get(key) / d[key] */

/* A new lock handle on `key` of `table` (created if missing), made in C:
 * the class's slots filled as LockHandle.__init__ fills them, plus _core. */
static PyObject *
lt_get(PyObject *table, PyObject *key)
{
    PyObject *c = PyObject_GetAttr(table, str_core);
    if (c == NULL)
        return NULL;
    if (!Py_IS_TYPE(c, &CoreType)) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_TypeError, "table has no shared-memory core");
        return NULL;
    }
    Core *core = (Core *)c;
    uint64_t i, s;
    if (!core->has_view) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_ValueError, "table is closed");
        return NULL;
    }
    if (!identity_ready() || resolve_fast(core, key, 1, 1, &i, &s) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    PyTypeObject *cls = lock_slots.cls;
    PyObject *h = cls->tp_alloc(cls, 0);
    PyObject *zero = PyLong_FromLong(0);
    if (h == NULL || zero == NULL) {
        Py_XDECREF(h);
        Py_XDECREF(zero);
        Py_DECREF(c);
        return NULL;
    }
    slot_set(h, lock_slots.table, table);
    slot_set(h, lock_slots.key, key);
    slot_set(h, lock_slots.shared, Py_False);
    slot_set(h, lock_slots.recovered, Py_False);
    slot_steal(h, lock_slots.fence, zero);
    slot_set(h, lock_slots.holding, Py_False);
    slot_set(h, lock_slots.gate, Py_None);
    slot_steal(h, lock_slots.core, c);
    return h;
}

static PyMethodDef lock_table_methods[] = {
    {"get", (PyCFunction)lt_get, METH_O,
     "get(key) -> a lock handle on key (created if missing): Go's Get."},
    {"__getitem__", (PyCFunction)lt_get, METH_O, "d[key]: get(key)."},
    {NULL}
};

/* bind_lock_handle(handle_class, table_class): see the section comment. */
static PyObject *
mod_bind_lock_handle(PyObject *m, PyObject *args)
{
    PyObject *cls, *table_cls;
    if (!PyArg_ParseTuple(args, "OO", &cls, &table_cls))
        return NULL;
    if (!PyType_Check(cls) || !PyType_Check(table_cls)) {
        PyErr_SetString(PyExc_TypeError, "bind_lock_handle(handle_class, table_class)");
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (already_bound(&lock_slots, t))
        return NULL;
    HandleSlots hs = {0};
    if ((hs.table = slot_offset(t, "_table")) < 0 || (hs.key = slot_offset(t, "_key")) < 0
            || (hs.core = slot_offset(t, "_core")) < 0
            || (hs.shared = slot_offset(t, "_shared")) < 0
            || (hs.recovered = slot_offset(t, "recovered")) < 0
            || (hs.fence = slot_offset(t, "fence")) < 0
            || (hs.holding = slot_offset(t, "_holding")) < 0
            || (hs.gate = slot_offset(t, "_gate")) < 0)
        return NULL;
    if (install_methods(t, lock_handle_methods) < 0)
        return NULL;
    PyObject *prop = NULL;
    {
        static PyGetSetDef held = {"held_by_me", lh_held_by_me, NULL,
                                   "Whether this process holds this side of the lock now.",
                                   NULL};
        prop = PyDescr_NewGetSet(t, &held);
        if (prop == NULL || PyObject_SetAttrString(cls, "held_by_me", prop) < 0) {
            Py_XDECREF(prop);
            return NULL;
        }
        Py_DECREF(prop);
    }
    hs.cls = (PyTypeObject *)Py_NewRef(cls);
    PyTypeObject *old = lock_slots.cls;
    lock_slots = hs;
    Py_XDECREF(old);
    if (install_methods((PyTypeObject *)table_cls, lock_table_methods) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* --- CounterHandle.add */

static PyObject *
ch_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long n = 1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "add(n=1)");
        return NULL;
    }
    if (nargs == 1) {
        if (!PyLong_Check(args[0])) {
            PyErr_Format(PyExc_TypeError, "add() amount must be an int, not %.100s",
                         Py_TYPE(args[0])->tp_name);
            return NULL;
        }
        n = PyLong_AsLongLong(args[0]);
        if (n == -1 && PyErr_Occurred())
            return NULL;
    }
    Core *c = handle_core(self, &counter_slots);
    if (c == NULL)
        return NULL;
    PyObject *key = handle_key(self, &counter_slots);
    if (key == NULL)
        return NULL;
    return counter_rmw(c, key, RMW_ADD, n);
}

static PyMethodDef counter_handle_methods[] = {
    {"add", (PyCFunction)(void (*)(void))ch_add, METH_FASTCALL,
     "add(n=1) -> int: atomically add n to this key (created at 0)."},
    {NULL}
};

/* bind_counter_handle(handle_class) */
static PyObject *
mod_bind_counter_handle(PyObject *m, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "bind_counter_handle(handle_class)");
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (already_bound(&counter_slots, t))
        return NULL;
    HandleSlots hs = {0};
    if ((hs.table = slot_offset(t, "_table")) < 0 || (hs.key = slot_offset(t, "_key")) < 0
            || (hs.core = slot_offset(t, "_core")) < 0)
        return NULL;
    if (install_methods(t, counter_handle_methods) < 0)
        return NULL;
    hs.cls = (PyTypeObject *)Py_NewRef(cls);
    PyTypeObject *old = counter_slots.cls;
    counter_slots = hs;
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

/* --- Struct records: a layout's bytes <-> its MutableRecord, in C */

/* RecordCodec(cls, unpack_from, pack, padding, error): the record of an
 * update() block, made from a slot's bytes and packed back, without a
 * Python frame.  `cls` is the layout's MutableRecord subclass (its fields
 * in `_fields`, each a __slots__ entry, plus `recovered`); unpack_from and
 * pack are the layout's struct.Struct methods, padding the bytes that pad a
 * packed record to the slot's record size, error struct.error.  make() and
 * pack() do what records.py's Python codec did: the same record, the same
 * bytes, a ValueError naming the values when a field does not fit. */
typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;
    PyObject *fields;        /* tuple of str, the record's field names     */
    PyObject *unpack_from, *pack, *padding, *error;
    Py_ssize_t nfields;
    Py_ssize_t *offsets;     /* per field: its slot's offset in a record   */
    Py_ssize_t recovered;    /* the `recovered` slot's offset              */
} RecordCodec;

static PyTypeObject RecordCodecType;

static int
RecordCodec_init(RecordCodec *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"cls", "unpack_from", "pack", "padding", "error", NULL};
    PyObject *cls, *unpack_from, *pack, *padding, *error;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOO!O", kwlist, &PyType_Type, &cls,
                                     &unpack_from, &pack, &PyBytes_Type, &padding, &error))
        return -1;
    if (self->offsets != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RecordCodec is initialised once");
        return -1;
    }
    PyObject *fields = PyObject_GetAttrString(cls, "_fields");
    if (fields == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    if (fields == NULL || !PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) < 1) {
        if (fields == NULL && PyErr_Occurred())
            return -1;
        Py_XDECREF(fields);
        PyErr_SetString(PyExc_TypeError, "RecordCodec: cls._fields must be a non-empty tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    Py_ssize_t *offsets = PyMem_Calloc((size_t)n, sizeof *offsets);
    if (offsets == NULL) {
        Py_DECREF(fields);
        PyErr_NoMemory();
        return -1;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    Py_ssize_t recovered = slot_offset(t, "recovered");
    for (Py_ssize_t k = 0; recovered >= 0 && k < n; k++) {
        const char *name = PyUnicode_Check(PyTuple_GET_ITEM(fields, k))
                           ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(fields, k)) : NULL;
        if (name == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "RecordCodec: field names are str");
            recovered = -1;
        } else if ((offsets[k] = slot_offset(t, name)) < 0) {
            recovered = -1;
        }
    }
    if (recovered < 0) {
        Py_DECREF(fields);
        PyMem_Free(offsets);
        return -1;
    }
    self->cls = (PyTypeObject *)Py_NewRef(cls);
    self->fields = fields;
    self->unpack_from = Py_NewRef(unpack_from);
    self->pack = Py_NewRef(pack);
    self->padding = Py_NewRef(padding);
    self->error = Py_NewRef(error);
    self->nfields = n;
    self->offsets = offsets;
    self->recovered = recovered;
    return 0;
}

static int
RecordCodec_traverse(RecordCodec *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cls);
    Py_VISIT(self->fields);
    Py_VISIT(self->unpack_from);
    Py_VISIT(self->pack);
    Py_VISIT(self->padding);
    Py_VISIT(self->error);
    return 0;
}

static int
RecordCodec_clear(RecordCodec *self)
{
    Py_CLEAR(self->cls);
    Py_CLEAR(self->fields);
    Py_CLEAR(self->unpack_from);
    Py_CLEAR(self->pack);
    Py_CLEAR(self->padding);
    Py_CLEAR(self->error);
    return 0;
}

static void
RecordCodec_dealloc(RecordCodec *self)
{
    PyObject_GC_UnTrack(self);
    RecordCodec_clear(self);
    PyMem_Free(self->offsets);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
codec_ready(RecordCodec *self)
{
    if (self->offsets == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RecordCodec not initialised");
        return 0;
    }
    return 1;
}

/* make(data, recovered) -> a new record holding the unpacked fields. */
static PyObject *
RecordCodec_make(RecordCodec *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "make(data, recovered) takes 2 arguments");
        return NULL;
    }
    if (!codec_ready(self))
        return NULL;
    PyObject *values = PyObject_Vectorcall(self->unpack_from, args, 1, NULL);
    if (values == NULL)
        return NULL;
    if (!PyTuple_Check(values) || PyTuple_GET_SIZE(values) != self->nfields) {
        Py_DECREF(values);
        PyErr_SetString(PyExc_ValueError, "a record's bytes unpack to the wrong fields");
        return NULL;
    }
    PyObject *rec = self->cls->tp_alloc(self->cls, 0);
    if (rec != NULL) {
        for (Py_ssize_t k = 0; k < self->nfields; k++)
            slot_set(rec, self->offsets[k], PyTuple_GET_ITEM(values, k));
        slot_set(rec, self->recovered, PyObject_IsTrue(args[1]) > 0 ? Py_True : Py_False);
    }
    Py_DECREF(values);
    return rec;
}

/* pack(rec) -> the record's bytes, padded; ValueError when a field does
 * not fit (struct.error, named with the values), AttributeError for a
 * field deleted from the record. */
static PyObject *
RecordCodec_pack(RecordCodec *self, PyObject *rec)
{
    if (!codec_ready(self))
        return NULL;
    if (!PyObject_TypeCheck(rec, self->cls)) {
        PyErr_Format(PyExc_TypeError, "pack() needs a %.100s, not %.100s",
                     self->cls->tp_name, Py_TYPE(rec)->tp_name);
        return NULL;
    }
    PyObject *small[8], **values = small;
    if (self->nfields > 8 && (values = PyMem_Malloc((size_t)self->nfields * sizeof *values)) == NULL)
        return PyErr_NoMemory();
    PyObject *packed = NULL;
    Py_ssize_t k;
    for (k = 0; k < self->nfields; k++) {
        values[k] = SLOT(rec, self->offsets[k]);
        if (values[k] == NULL) {
            PyErr_Format(PyExc_AttributeError, "record has no field %R (deleted?)",
                         PyTuple_GET_ITEM(self->fields, k));
            goto done;
        }
    }
    packed = PyObject_Vectorcall(self->pack, values, (size_t)self->nfields, NULL);
    if (packed == NULL) {
        if (PyErr_ExceptionMatches(self->error)) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            PyObject *list = PyList_New(self->nfields);
            if (list != NULL) {
                for (k = 0; k < self->nfields; k++)
                    PyList_SET_ITEM(list, k, Py_NewRef(values[k]));
                PyErr_Format(PyExc_ValueError, "cannot pack record %R: %S", list, ev);
                Py_DECREF(list);
            }
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        }
        goto done;
    }
    if (PyBytes_GET_SIZE(self->padding) > 0)
        PyBytes_Concat(&packed, self->padding);
done:
    if (values != small)
        PyMem_Free(values);
    return packed;
}

static PyMethodDef RecordCodec_methods[] = {
    {"make", (PyCFunction)(void (*)(void))RecordCodec_make, METH_FASTCALL,
     "make(data, recovered) -> a new record holding the fields unpacked from data."},
    {"pack", (PyCFunction)RecordCodec_pack, METH_O,
     "pack(rec) -> the record's bytes, padded (ValueError when a field does not fit)."},
    {NULL}
};

static PyTypeObject RecordCodecType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmdict._core.RecordCodec",
    .tp_basicsize = sizeof(RecordCodec),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RecordCodec(cls, unpack_from, pack, padding, error): a Struct layout's "
              "record bytes to its MutableRecord and back, in C.",
    .tp_traverse = (traverseproc)RecordCodec_traverse,
    .tp_clear = (inquiry)RecordCodec_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RecordCodec_init,
    .tp_dealloc = (destructor)RecordCodec_dealloc,
    .tp_methods = RecordCodec_methods,
};

/* --- Struct update(): `with d.update(key) as rec:` */

/* records.py's _Update keeps (_table, _key, _slot, _state, _rec) in its
 * __slots__; these C __enter__ / __exit__ (and a C StructTable.update that
 * makes one without a Python frame) do what its Python methods did, calling
 * back only for what is Python's: the self-deadlock check when this
 * process has an update open, the OwnerDiedWarning, and NotOwner.  The
 * record is made from the bytes and packed back by the table's
 * _make_record / _pack_record, the bound methods of its layout's
 * RecordCodec (above): C functions, called without a Python frame. */
typedef struct {
    PyTypeObject *cls;
    Py_ssize_t table, key, slot, state, rec;
} UpdateSlots;

static UpdateSlots update_slots;
static PyObject *str_updating, *str_make_record, *str_pack_record, *str_refuse,
                *str_recovered_warning, *str_lost_lock;

static PyObject *Core_record_begin(Core *self, PyObject *key);
static PyObject *Core_record_commit(Core *self, PyObject *const *args, Py_ssize_t nargs);

/* The table's core, borrowed from the table's attribute (a new reference
 * returned; NULL with an exception). */
static Core *
table_core(PyObject *table)
{
    PyObject *c = PyObject_GetAttr(table, str_core);
    if (c == NULL)
        return NULL;
    if (!Py_IS_TYPE(c, &CoreType)) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_TypeError, "table has no shared-memory core");
        return NULL;
    }
    return (Core *)c;
}

/* record_commit(slot, state, data) through the C function; the code, or -1. */
static int
update_commit(Core *core, PyObject *self, PyObject *data)
{
    PyObject *args[3] = {SLOT(self, update_slots.slot), SLOT(self, update_slots.state), data};
    if (args[0] == NULL || args[1] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "update block exited without being entered");
        return -1;
    }
    PyObject *r = Core_record_commit(core, args, 3);
    if (r == NULL)
        return -1;
    long code = PyLong_AsLong(r);
    Py_DECREF(r);
    return (int)code;
}

/* Forget this thread's open update of the slot (table._updating.pop(slot)). */
static int
update_forget(PyObject *updating, PyObject *slot)
{
    if (slot == NULL || !PyDict_Check(updating))
        return 0;
    PyObject *v = PyDict_GetItemWithError(updating, slot);
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return PyDict_DelItem(updating, slot);
}

static PyObject *
upd_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *table = SLOT(self, update_slots.table), *key = SLOT(self, update_slots.key);
    if (table == NULL || key == NULL) {
        PyErr_SetString(PyExc_AttributeError, "update has no table or key");
        return NULL;
    }
    PyObject *updating = PyObject_GetAttr(table, str_updating);
    if (updating == NULL)
        return NULL;
    if (!PyDict_Check(updating)) {
        Py_DECREF(updating);
        PyErr_SetString(PyExc_TypeError, "table._updating must be a dict");
        return NULL;
    }
    PyObject *rec = NULL, *begun = NULL, *ident = NULL;
    Core *core = NULL;
    if (PyDict_GET_SIZE(updating) > 0) {          /* this process has one open */
        PyObject *r = PyObject_CallMethodOneArg(table, str_refuse, key);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    core = table_core(table);
    if (core == NULL)
        goto done;
    begun = Core_record_begin(core, key);       /* (slot, state, recovered, data) */
    if (begun == NULL)
        goto done;
    PyObject *slot = PyTuple_GET_ITEM(begun, 0), *recovered = PyTuple_GET_ITEM(begun, 2);
    slot_set(self, update_slots.slot, slot);
    slot_set(self, update_slots.state, PyTuple_GET_ITEM(begun, 1));
    if (recovered == Py_True) {
        PyObject *r = PyObject_CallMethodNoArgs(table, str_recovered_warning);
        if (r == NULL)
            goto abandon;
        Py_DECREF(r);
    }
    ident = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (ident == NULL || PyDict_SetItem(updating, slot, ident) < 0)
        goto abandon;
    PyObject *make = PyObject_GetAttr(table, str_make_record);
    if (make == NULL)
        goto abandon;
    PyObject *margs[2] = {PyTuple_GET_ITEM(begun, 3), recovered};
    rec = PyObject_Vectorcall(make, margs, 2, NULL);
    Py_DECREF(make);
    if (rec == NULL)
        goto abandon;
    slot_set(self, update_slots.rec, rec);
    goto done;
abandon:
    /* The record lock is held: give it back, writing nothing, then raise. */
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (update_forget(updating, slot) < 0)
            PyErr_Clear();
        if (update_commit(core, self, Py_None) < 0)
            PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
done:
    Py_XDECREF(ident);
    Py_XDECREF(begun);
    Py_XDECREF((PyObject *)core);
    Py_DECREF(updating);
    return rec;
}

static PyObject *
upd_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *table = SLOT(self, update_slots.table), *rec = SLOT(self, update_slots.rec);
    if (table == NULL) {
        PyErr_SetString(PyExc_AttributeError, "update has no table");
        return NULL;
    }
    PyObject *updating = PyObject_GetAttr(table, str_updating);
    if (updating == NULL)
        return NULL;
    int r = update_forget(updating, SLOT(self, update_slots.slot));
    Py_DECREF(updating);
    if (r < 0)
        return NULL;
    Core *core = table_core(table);
    if (core == NULL)
        return NULL;
    PyObject *data = Py_NewRef(Py_None);
    int clean = nargs < 1 || args[0] == Py_None;
    if (clean) {
        if (rec == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "update block exited without being entered");
            Py_DECREF(data);
            Py_DECREF(core);
            return NULL;
        }
        PyObject *packed = PyObject_CallMethodOneArg(table, str_pack_record, rec);
        if (packed == NULL) {                   /* nothing written; the lock given back */
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            if (update_commit(core, self, Py_None) < 0)
                PyErr_Clear();
            PyErr_Restore(et, ev, tb);
            Py_DECREF(data);
            Py_DECREF(core);
            return NULL;
        }
        Py_SETREF(data, packed);
    }
    int code = update_commit(core, self, data);
    Py_DECREF(data);
    Py_DECREF(core);
    if (code < 0)
        return NULL;
    if (code != RC_OK)
        return PyObject_CallMethodNoArgs(table, str_lost_lock);     /* raises */
    Py_RETURN_NONE;
}

static PyMethodDef update_methods[] = {
    {"__enter__", (PyCFunction)upd_enter, METH_NOARGS,
     "Take the record lock (creating the key), copy the record: the mutable record."},
    {"__exit__", (PyCFunction)(void (*)(void))upd_exit, METH_FASTCALL,
     "Write the record back on a clean exit (not on an exception); release the lock."},
    {NULL}
};

/* StructTable.update(key): an _Update, made without a Python frame. */
static PyObject *
st_update(PyObject *table, PyObject *key)
{
    PyTypeObject *cls = update_slots.cls;
    PyObject *u = cls->tp_alloc(cls, 0);
    if (u == NULL)
        return NULL;
    slot_set(u, update_slots.table, table);
    slot_set(u, update_slots.key, key);
    return u;
}

static PyMethodDef struct_table_methods[] = {
    {"update", (PyCFunction)st_update, METH_O,
     "update(key): `with d.update(key) as rec: rec.tokens -= 1`, an atomic "
     "read-modify-write; written back on a clean exit, not at all on an exception; "
     "rec.recovered says whether the previous writer died inside its update."},
    {NULL}
};

/* bind_record_update(update_class, table_class) */
static PyObject *
mod_bind_record_update(PyObject *m, PyObject *args)
{
    PyObject *cls, *table_cls;
    if (!PyArg_ParseTuple(args, "OO", &cls, &table_cls))
        return NULL;
    if (!PyType_Check(cls) || !PyType_Check(table_cls)) {
        PyErr_SetString(PyExc_TypeError, "bind_record_update(update_class, table_class)");
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (update_slots.cls != NULL && update_slots.cls != t) {
        PyErr_Format(PyExc_TypeError, "%.100s is already bound; %.100s cannot be",
                     update_slots.cls->tp_name, t->tp_name);
        return NULL;
    }
    UpdateSlots us = {0};
    if ((us.table = slot_offset(t, "_table")) < 0 || (us.key = slot_offset(t, "_key")) < 0
            || (us.slot = slot_offset(t, "_slot")) < 0
            || (us.state = slot_offset(t, "_state")) < 0
            || (us.rec = slot_offset(t, "_rec")) < 0)
        return NULL;
    if (install_methods(t, update_methods) < 0)
        return NULL;
    us.cls = (PyTypeObject *)Py_NewRef(cls);
    PyTypeObject *old = update_slots.cls;
    update_slots = us;
    Py_XDECREF(old);
    if (install_methods((PyTypeObject *)table_cls, struct_table_methods) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* Float cells: a metric's series bound once (shmdict.prometheus)           */
/* ------------------------------------------------------------------------ */

/* FloatCells(core, keys, bounds=None, owner=0, fallback=None, check=None):
 * the series of one metric child, each key's (slot, state) cached here, so
 * Counter.inc / Gauge.inc / Histogram.observe are one C call: no key hash,
 * no cache lookup while the slot stays the key's, and the bucket search of
 * a histogram in C.  A cached slot is validated against its state word on
 * every add (a deleted series is found again, created at 0, as add_float
 * does).  `owner` (a per-process gauge's process id) makes a forked child
 * call `fallback(verb, value)` instead, which rekeys the metric. */
typedef struct {
    PyObject_HEAD
    Core *core;
    PyObject *keys;          /* tuple                                          */
    uint64_t *at;            /* per key: slot, state; slot UINT64_MAX unknown  */
    double *bounds;          /* histogram upper bounds (nbounds), else NULL    */
    Py_ssize_t nkeys, nbounds;
    uint64_t owner;
    PyObject *fallback, *check;
} FloatCells;

static PyTypeObject FloatCellsType;

static int
FloatCells_init(FloatCells *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"core", "keys", "bounds", "owner", "fallback", "check", NULL};
    PyObject *core, *keys, *bounds = Py_None, *fallback = Py_None, *check = Py_None;
    unsigned long long owner = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!|OKOO", kwlist, &CoreType, &core,
                                     &PyTuple_Type, &keys, &bounds, &owner, &fallback,
                                     &check))
        return -1;
    if (self->at != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FloatCells is initialised once");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    if (n < 1 || n > 100000) {
        PyErr_SetString(PyExc_ValueError, "FloatCells needs 1 to 100000 keys");
        return -1;
    }
    Py_ssize_t nb = 0;
    double *b = NULL;
    if (bounds != Py_None) {
        PyObject *seq = PySequence_Tuple(bounds);
        if (seq == NULL)
            return -1;
        nb = PyTuple_GET_SIZE(seq);
        if (nb + 1 != n) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "a histogram has one key per bound, and a sum");
            return -1;
        }
        b = PyMem_Malloc(sizeof(double) * (size_t)(nb ? nb : 1));
        for (Py_ssize_t k = 0; b != NULL && k < nb; k++) {
            b[k] = PyFloat_AsDouble(PyTuple_GET_ITEM(seq, k));
            if (b[k] == -1.0 && PyErr_Occurred()) {
                PyMem_Free(b);
                Py_DECREF(seq);
                return -1;
            }
            if (k > 0 && !(b[k] > b[k - 1])) {
                PyMem_Free(b);
                Py_DECREF(seq);
                PyErr_SetString(PyExc_ValueError, "bounds must increase");
                return -1;
            }
        }
        Py_DECREF(seq);
        if (b == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    self->at = PyMem_Malloc(sizeof(uint64_t) * 2 * (size_t)n);
    if (self->at == NULL) {
        PyMem_Free(b);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        self->at[2 * k] = UINT64_MAX;
        self->at[2 * k + 1] = 0;
    }
    self->bounds = b;
    self->nbounds = nb;
    self->nkeys = n;
    self->owner = owner;
    self->core = (Core *)Py_NewRef(core);
    self->keys = Py_NewRef(keys);
    self->fallback = Py_NewRef(fallback);
    self->check = Py_NewRef(check);
    return 0;
}

static int
FloatCells_traverse(FloatCells *self, visitproc visit, void *arg)
{
    Py_VISIT(self->core);
    Py_VISIT(self->keys);
    Py_VISIT(self->fallback);
    Py_VISIT(self->check);
    return 0;
}

static int
FloatCells_clear(FloatCells *self)
{
    Py_CLEAR(self->core);
    Py_CLEAR(self->keys);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->check);
    return 0;
}

static void
FloatCells_dealloc(FloatCells *self)
{
    PyObject_GC_UnTrack(self);
    FloatCells_clear(self);
    PyMem_Free(self->at);
    PyMem_Free(self->bounds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Atomically add x to the float64 of key k (or store it, `set`): through
 * the cached slot while its state word is still the one cached, else
 * resolved again (creating the key).  0, or -1 with an exception set. */
static int
cell_update(FloatCells *self, Py_ssize_t k, double x, int set)
{
    Core *c = self->core;
    if (c == NULL || self->at == NULL) {
        PyErr_SetString(PyExc_ValueError, "FloatCells is not initialised");
        return -1;
    }
    if (!c->has_view) {
        PyErr_SetString(PyExc_ValueError, "table is closed");
        return -1;
    }
    uint64_t i = self->at[2 * k], s = self->at[2 * k + 1];
    for (int attempt = 0; attempt < 1000000; attempt++) {
        if (!valid_slot(c, i) || load_acq(slot_at(c, i)) != s
                || slot_expired(c, slot_at(c, i), s)) {
            if (resolve_fast(c, PyTuple_GET_ITEM(self->keys, k), 1, attempt < 2, &i, &s) < 0)
                return -1;
            self->at[2 * k] = i;
            self->at[2 * k + 1] = s;
        }
        char *slot = slot_at(c, i);
        for (;;) {
            int64_t old;
            if (!read_pair(slot, s, &old))
                break;                      /* state changed: resolve again */
            double now;
            memcpy(&now, &old, sizeof now);
            now = set ? x : now + x;
            uint64_t new;
            memcpy(&new, &now, sizeof new);
            if (cas_pair(slot, s, (uint64_t)old, s, new, NULL))
                return 0;
        }
        i = UINT64_MAX;
    }
    PyErr_SetString(PyExc_RuntimeError, "key kept moving; giving up");
    return -1;
}

/* One optional float argument (default 1.0) and, with `exemplar`, an
 * optional second one (positional or keyword) checked by self->check. */
static int
cells_args(FloatCells *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
           const char *name, const char *argname, int required, int exemplar,
           double *x, PyObject **ex)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *xo = nargs > 0 ? args[0] : NULL, *eo = nargs > 1 ? args[1] : NULL;
    if (nargs > 1 + exemplar)
        goto usage;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        if (PyUnicode_CompareWithASCIIString(kw, argname) == 0 && xo == NULL)
            xo = args[nargs + k];
        else if (exemplar && PyUnicode_CompareWithASCIIString(kw, "exemplar") == 0 && eo == NULL)
            eo = args[nargs + k];
        else
            goto usage;
    }
    if (xo == NULL && required)
        goto usage;
    *x = 1.0;
    if (xo != NULL) {
        *x = PyFloat_AsDouble(xo);
        if (*x == -1.0 && PyErr_Occurred())
            return -1;
    }
    *ex = eo;
    return 0;
usage:
    PyErr_Format(PyExc_TypeError, "%s(): bad arguments", name);
    return -1;
}

static int
cells_check_exemplar(FloatCells *self, PyObject *ex)
{
    if (ex == NULL || ex == Py_None)
        return 0;
    int truthy = PyObject_IsTrue(ex);
    if (truthy <= 0)
        return truthy;
    if (self->check == Py_None)
        return 0;
    PyObject *r = PyObject_CallOneArg(self->check, ex);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* A per-process series seen from a forked child: the Python layer rekeys. */
#define CELLS_FORKED(self) ((self)->owner != 0 && (self)->owner != my_id())

static PyObject *
cells_fallback(FloatCells *self, const char *verb, double x)
{
    if (self->fallback == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "series of another process");
        return NULL;
    }
    return PyObject_CallFunction(self->fallback, "sd", verb, x);
}

/* inc(amount=1, exemplar=None): Counter.inc (amount not negative). */
static PyObject *
FloatCells_inc(FloatCells *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    double x;
    PyObject *ex;
    if (cells_args(self, args, nargs, kwnames, "inc", "amount", 0, 1, &x, &ex) < 0)
        return NULL;
    if (x < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "Counters can only be incremented by non-negative amounts.");
        return NULL;
    }
    if (cell_update(self, 0, x, 0) < 0 || cells_check_exemplar(self, ex) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
cells_gauge(FloatCells *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
            const char *verb, const char *argname, int required, double sign, int set)
{
    double x;
    PyObject *ex;
    if (cells_args(self, args, nargs, kwnames, verb, argname, required, 0, &x, &ex) < 0)
        return NULL;
    if (CELLS_FORKED(self))
        return cells_fallback(self, verb, x);
    if (cell_update(self, 0, sign * x, set) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Gauge.inc(amount=1) / dec(amount=1) / set(value) */
static PyObject *
FloatCells_add(FloatCells *self, PyObject *const *a, Py_ssize_t n, PyObject *kw)
{ return cells_gauge(self, a, n, kw, "inc", "amount", 0, 1.0, 0); }
static PyObject *
FloatCells_sub(FloatCells *self, PyObject *const *a, Py_ssize_t n, PyObject *kw)
{ return cells_gauge(self, a, n, kw, "dec", "amount", 0, -1.0, 0); }
static PyObject *
FloatCells_set(FloatCells *self, PyObject *const *a, Py_ssize_t n, PyObject *kw)
{ return cells_gauge(self, a, n, kw, "set", "value", 1, 1.0, 1); }

/* observe(amount, exemplar=None): a histogram's bucket += 1 (bisect_left
 * over the bounds; NaN falls in no bucket) and its sum += amount; without
 * bounds (a summary: keys count, sum) count += 1 and sum += amount. */
static PyObject *
FloatCells_observe(FloatCells *self, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames)
{
    double x;
    PyObject *ex;
    if (cells_args(self, args, nargs, kwnames, "observe", "amount", 1, 1, &x, &ex) < 0)
        return NULL;
    if (self->nkeys < 2) {
        PyErr_SetString(PyExc_TypeError, "observe() needs a histogram's or summary's cells");
        return NULL;
    }
    if (self->bounds != NULL) {
        if (x == x) {
            Py_ssize_t lo = 0, hi = self->nbounds;
            while (lo < hi) {                   /* bisect_left */
                Py_ssize_t mid = (lo + hi) / 2;
                if (self->bounds[mid] < x)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo >= self->nbounds) {          /* above +Inf: impossible, say so */
                PyErr_SetString(PyExc_ValueError, "no bucket for this value");
                return NULL;
            }
            if (cell_update(self, lo, 1.0, 0) < 0)
                return NULL;
        }
        if (cell_update(self, self->nkeys - 1, x, 0) < 0)
            return NULL;
    } else if (cell_update(self, 0, 1.0, 0) < 0 || cell_update(self, 1, x, 0) < 0) {
        return NULL;
    }
    if (cells_check_exemplar(self, ex) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef FloatCells_methods[] = {
    {"inc", (PyCFunction)(void (*)(void))FloatCells_inc, METH_FASTCALL | METH_KEYWORDS,
     "inc(amount=1, exemplar=None): Counter.inc on the first key."},
    {"add", (PyCFunction)(void (*)(void))FloatCells_add, METH_FASTCALL | METH_KEYWORDS,
     "add(amount=1): Gauge.inc on the first key."},
    {"sub", (PyCFunction)(void (*)(void))FloatCells_sub, METH_FASTCALL | METH_KEYWORDS,
     "sub(amount=1): Gauge.dec on the first key."},
    {"set", (PyCFunction)(void (*)(void))FloatCells_set, METH_FASTCALL | METH_KEYWORDS,
     "set(value): Gauge.set on the first key."},
    {"observe", (PyCFunction)(void (*)(void))FloatCells_observe,
     METH_FASTCALL | METH_KEYWORDS,
     "observe(amount, exemplar=None): Histogram.observe (bounds) or Summary.observe."},
    {NULL}
};

static PyTypeObject FloatCellsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmdict._core.FloatCells",
    .tp_basicsize = sizeof(FloatCells),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "FloatCells(core, keys, bounds=None, owner=0, fallback=None, check=None): "
              "a metric child's float series, bound once, updated in one C call.",
    .tp_traverse = (traverseproc)FloatCells_traverse,
    .tp_clear = (inquiry)FloatCells_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FloatCells_init,
    .tp_dealloc = (destructor)FloatCells_dealloc,
    .tp_methods = FloatCells_methods,
};

/* ------------------------------------------------------------------------ */
/* Module plumbing                                                          */
/* ------------------------------------------------------------------------ */

/* counts() -> (live, tombstones), over every attached tier */
static PyObject *
Core_counts(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    if (refresh_tiers(self) < 0)
        return NULL;
    long long live = 0, tombstones = 0;
    for (unsigned k = 0; k < self->ntiers; k++) {
        live += (long long)load_acq(&self->tiers[k].header->live);
        tombstones += (long long)load_acq(&self->tiers[k].header->tombstones);
    }
    return Py_BuildValue("(LL)", live, tombstones);
}

/* Tier argument of the per-tier methods. */
static Tier *
tier_arg(Core *self, unsigned long long k)
{
    if (k >= self->ntiers) {
        PyErr_SetString(PyExc_IndexError, "tier out of range");
        return NULL;
    }
    return &self->tiers[k];
}

/* correct_tombstones(count, tier=0) -> the count it replaces.  The
 * tombstone count is statistics only (a process killed between a slot's
 * CAS and the count's update leaves it off by one); check() recounts the
 * slots of each tier and sets it. */
static PyObject *
Core_correct_tombstones(Core *self, PyObject *args)
{
    long long count;
    unsigned long long k = 0;
    if (!PyArg_ParseTuple(args, "L|K", &count, &k))
        return NULL;
    REQUIRE_OPEN(self);
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "a tombstone count is >= 0");
        return NULL;
    }
    Tier *t = tier_arg(self, k);
    if (t == NULL)
        return NULL;
    int64_t old = __atomic_exchange_n(&t->header->tombstones, (int64_t)count,
                                      __ATOMIC_ACQ_REL);
    return PyLong_FromLongLong(old);
}

/* compact() -> int: sweep every attached tier whole now ("Compaction"),
 * whatever the trigger says; the tombstones made empty. */
static PyObject *
Core_compact(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    if (self->sems == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "stripe semaphores not attached");
        return NULL;
    }
    long long made = 0;
    for (unsigned k = 0; k < self->ntiers; k++) {
        long long r = compact_tier(self, k, 0, 0);
        if (r < 0)
            return NULL;
        made += r;
    }
    return PyLong_FromLongLong(made);
}

/* set_auto_compact(on) -> the previous setting: whether this Core's
 * inserts sweep tombstones when due (benchmarks turn it off to measure a
 * table without sweeps). */
static PyObject *
Core_set_auto_compact(Core *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    int old = self->auto_compact;
    self->auto_compact = on;
    return PyBool_FromLong(old);
}

/* probe_stats(tier=0) -> dict: the tier's slots by kind (empty, tombstone,
 * published, claimed), mean_reach (the mean reach entry, an unbounded one
 * as nslots - 1) and mean_miss (the slots a miss examines, averaged over
 * every home slot: up to the first empty slot or past reach, whichever
 * comes first, as find_in_tier does).  Read without locks: exact on a
 * quiet table. */
static PyObject *
Core_probe_stats(Core *self, PyObject *args)
{
    unsigned long long k = 0;
    if (!PyArg_ParseTuple(args, "|K", &k))
        return NULL;
    REQUIRE_OPEN(self);
    Tier *t = tier_arg(self, k);
    if (t == NULL)
        return NULL;
    uint64_t n = t->nslots, kinds[4] = {0, 0, 0, 0};
    double reach_sum = 0, miss_sum = 0;
    /* Slots from each slot to the first empty one, by a backward walk
     * taken twice round the ring (the first only brings the count round). */
    uint64_t to_empty = n;
    for (int pass = 0; pass < 2; pass++)
        for (uint64_t i = n; i-- > 0;) {
            uint64_t s = load_acq(t->slots + i * self->slot_size);
            unsigned kind = st_kind(s);
            to_empty = kind == KIND_EMPTY ? 0 : (to_empty >= n ? n : to_empty + 1);
            if (pass == 0)
                continue;
            kinds[kind]++;
            uint64_t limit = reach_limit(t, i);
            reach_sum += (double)limit;
            miss_sum += (double)((to_empty < limit ? to_empty : limit) + 1);
        }
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:d,s:d}",
                         "empty", (unsigned long long)kinds[KIND_EMPTY],
                         "tombstone", (unsigned long long)kinds[KIND_TOMBSTONE],
                         "published", (unsigned long long)kinds[KIND_PUBLISHED],
                         "claimed", (unsigned long long)kinds[KIND_CLAIMED],
                         "mean_reach", reach_sum / (double)n,
                         "mean_miss", miss_sum / (double)n);
}

/* stripe_live(i) -> the stripe's own live count, summed over the tiers */
static PyObject *
Core_stripe_live(Core *self, PyObject *arg)
{
    unsigned long long i = PyLong_AsUnsignedLongLong(arg);
    if (i == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    REQUIRE_OPEN(self);
    if (i >= self->nstripes) {
        PyErr_SetString(PyExc_IndexError, "stripe out of range");
        return NULL;
    }
    if (refresh_tiers(self) < 0)
        return NULL;
    long long sum = 0;
    for (unsigned k = 0; k < self->ntiers; k++)
        sum += (long long)load_acq(&self->tiers[k].stripes[i].live);
    return PyLong_FromLongLong(sum);
}

/* tiers() -> [(nslots, capacity, live, tombstones)], one per attached tier */
static PyObject *
Core_tiers(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    if (refresh_tiers(self) < 0)
        return NULL;
    PyObject *out = PyList_New(self->ntiers);
    for (unsigned k = 0; out && k < self->ntiers; k++) {
        Tier *t = &self->tiers[k];
        PyObject *row = Py_BuildValue("(KKLL)", (unsigned long long)t->nslots,
                                      (unsigned long long)t->capacity,
                                      (long long)load_acq(&t->header->live),
                                      (long long)load_acq(&t->header->tombstones));
        if (row == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, k, row);
    }
    return out;
}

/* published_tiers() -> the tier count tier 0's header publishes */
static PyObject *
Core_published_tiers(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    return PyLong_FromUnsignedLong(published_tiers(self));
}

/* publish_tier(k) -> the published count after: tier k's segment is
 * complete, so CAS tier 0's count from k to k + 1 (whoever finds it at k:
 * its creator, or anyone who attached it after the creator died). */
static PyObject *
Core_publish_tier(Core *self, PyObject *arg)
{
    unsigned long long k = PyLong_AsUnsignedLongLong(arg);
    if (k == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    REQUIRE_OPEN(self);
    if (k == 0 || k >= SHMDICT_MAX_TIERS || k >= self->ntiers) {
        PyErr_SetString(PyExc_IndexError, "publish_tier: tier not attached here");
        return NULL;
    }
    uint64_t expected = k;
    cas64(&self->header->tiers, &expected, k + 1);
    return PyLong_FromUnsignedLong(published_tiers(self));
}

/* add_tier(buffer, capacity) -> tiers attached: map tier `ntiers` (a
 * segment of this table's format whose header says so), checked like the
 * first against format.h's geometry and the mapping. */
static PyObject *
Core_add_tier(Core *self, PyObject *args)
{
    PyObject *buffer;
    unsigned long long capacity;
    if (!PyArg_ParseTuple(args, "OK", &buffer, &capacity))
        return NULL;
    REQUIRE_OPEN(self);
    unsigned k = self->ntiers;
    if (k >= SHMDICT_MAX_TIERS) {
        PyErr_SetString(PyExc_ValueError, "too many tiers");
        return NULL;
    }
    Tier *t = &self->tiers[k];
    if (PyObject_GetBuffer(buffer, &t->view, PyBUF_WRITABLE) < 0)
        return NULL;
    struct shmdict_geometry g;
    const char *bad = NULL;
    struct shmdict_header *hd = (struct shmdict_header *)t->view.buf;
    if (((uintptr_t)t->view.buf & (SHMDICT_DATA_ALIGN - 1)) != 0)
        bad = "mapping is not 64-byte aligned";
    else if ((uint64_t)t->view.len < SHMDICT_HEADER_SIZE)
        bad = "the segment is smaller than a header";
    else if (capacity != shmdict_tier_capacity(self->capacity, self->max_capacity, k))
        bad = "tier capacity does not follow the format";
    else if (!shmdict_geometry(capacity, self->key_size, self->extra_size, self->nstripes, &g))
        bad = "tier capacity out of range";
    else if ((uint64_t)t->view.len < g.size)
        bad = "the tier's segment is smaller than its geometry";
    else if (load_acq(&hd->magic) != SHMDICT_MAGIC || hd->version != SHMDICT_FORMAT_VERSION
             || hd->tier != k || hd->capacity != capacity || hd->nslots != g.nslots
             || hd->slot_size != self->slot_size || hd->key_size != self->key_size
             || hd->extra_size != self->extra_size || hd->nstripes != self->nstripes
             || hd->seed != self->header->seed
             || hd->fingerprint != self->header->fingerprint
             || hd->data_offset != g.data_offset || hd->stripes_offset != g.stripes_offset)
        bad = "the tier's header is not this table's";
    if (bad) {
        PyBuffer_Release(&t->view);
        CoreState *st = core_state();
        if (st != NULL)
            PyErr_Format(st->CorruptGeometry, "corrupt table geometry: tier %u: %s", k, bad);
        return NULL;
    }
    t->has_view = 1;
    t->base = t->view.buf;
    t->header = hd;
    t->stripes = (struct shmdict_stripe *)(t->base + g.stripes_offset);
    t->slots = t->base + g.data_offset;
    t->reach = (uint16_t *)(t->slots + g.nslots * self->slot_size);
    t->nslots = g.nslots;
    t->capacity = capacity;
    /* Publish the tier to this process's lookups last. */
    __atomic_store_n(&self->ntiers, k + 1, __ATOMIC_RELEASE);
    return PyLong_FromUnsignedLong(self->ntiers);
}

/* stats() -> (inserts, deletes, max_capacity): tier 0's statistics words */
static PyObject *
Core_stats(Core *self, PyObject *Py_UNUSED(ignored))
{
    REQUIRE_OPEN(self);
    return Py_BuildValue("(KKK)", (unsigned long long)load_acq(&self->header->inserts),
                         (unsigned long long)load_acq(&self->header->deletes),
                         (unsigned long long)self->max_capacity);
}

/* takeovers() -> how many times this Core's own inserts took a stripe over
 * from a dead holder (those by Stripes.acquire are counted there). */
static PyObject *
Core_takeovers(Core *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong(self->takeovers);
}

static PyObject *
Core_close(Core *self, PyObject *Py_UNUSED(ignored))
{
    Core_release_view(self);
    if (self->cache)
        PyDict_Clear(self->cache);
    Py_RETURN_NONE;
}

static PyObject *
Core_clear_cache(Core *self, PyObject *Py_UNUSED(ignored))
{
    if (self->cache)
        PyDict_Clear(self->cache);
    Py_RETURN_NONE;
}

static PyMethodDef Core_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Core_add, METH_FASTCALL | METH_KEYWORDS,
     "add(key, n=1, *, ttl=None) -> int: atomically add n to a Counter key (created at "
     "0); ttl: seconds until the key expires (None: keep its expiry)."},
    {"set", (PyCFunction)(void (*)(void))Core_set, METH_FASTCALL | METH_KEYWORDS,
     "set(key, value, *, ttl=None): store a Counter value (creating the key)."},
    {"exchange", (PyCFunction)(void (*)(void))Core_exchange, METH_FASTCALL | METH_KEYWORDS,
     "exchange(key, value, *, ttl=None) -> old value (creating the key)."},
    {"set_ttl", (PyCFunction)(void (*)(void))Core_set_ttl, METH_FASTCALL,
     "set_ttl(key, seconds | None) -> bool: give an existing key a deadline (None: "
     "none); False if absent."},
    {"ttl", (PyCFunction)Core_ttl, METH_O,
     "ttl(key) -> float | None: seconds until the key expires; None: no deadline or absent."},
    {"expired", (PyCFunction)Core_expired, METH_NOARGS,
     "expired() -> int: expired keys not reclaimed yet (counted live until then)."},
    {"reclaim_expired", (PyCFunction)Core_reclaim_expired, METH_NOARGS,
     "reclaim_expired() -> int: tombstone every expired key under its stripe."},
    {"deadline", (PyCFunction)Core_deadline, METH_VARARGS,
     "deadline(slot, state) -> int | None: the key's deadline in CLOCK_MONOTONIC ns (0: "
     "none); None if the slot changed."},
    {"value", (PyCFunction)Core_value, METH_O,
     "value(key) -> int: the Counter value (creating the key)."},
    {"add_many", (PyCFunction)(void (*)(void))Core_add_many, METH_FASTCALL | METH_KEYWORDS,
     "add_many(mapping or (key, n) pairs, *, ttl=None) -> [new values]: add() of each, "
     "in one call."},
    {"read_many", (PyCFunction)Core_read_many, METH_O,
     "read_many(keys) -> [(value, exists)]: read() of each, in one call, never creating."},
    {"read", (PyCFunction)Core_read, METH_O,
     "read(key) -> (value, exists): never creates the key."},
    {"cas", (PyCFunction)(void (*)(void))Core_cas, METH_VARARGS | METH_KEYWORDS,
     "cas(key, old, new, set_on_not_exists=False) -> bool."},
    {"add_float", (PyCFunction)(void (*)(void))Core_add_float, METH_FASTCALL,
     "add_float(key, x=1.0) -> float: atomically add x to a float64 value word."},
    {"set_float", (PyCFunction)(void (*)(void))Core_set_float, METH_FASTCALL,
     "set_float(key, x): store x as a float64 value word (creating the key)."},
    {"gcra_hit", (PyCFunction)(void (*)(void))Core_gcra_hit, METH_FASTCALL | METH_KEYWORDS,
     "gcra_hit(emission_ns, tolerance_ns, burst, result_type, fallback, key, cost=1) "
     "-> result_type(allowed, burst, remaining, retry_after_s, reset_after_s)."},
    {"gcra", (PyCFunction)(void (*)(void))Core_gcra, METH_FASTCALL,
     "gcra(key, emission_ns, tolerance_ns, cost) -> (allowed, remaining, "
     "retry_after_ns, reset_after_ns): one GCRA step on CLOCK_MONOTONIC."},
    {"locate", (PyCFunction)(void (*)(void))Core_locate, METH_FASTCALL,
     "locate(key, create) -> (slot, state) or None, through the key cache."},
    {"find", (PyCFunction)Core_find, METH_VARARGS,
     "find(key_bytes, hash) -> (slot, state) or None: lock-free lookup."},
    {"insert", (PyCFunction)Core_insert, METH_VARARGS,
     "insert(key_bytes, hash, word0, extra) -> (slot, state, created); TableFull "
     "when every attached tier is full.  The caller holds the key's stripe."},
    {"insert_new", (PyCFunction)Core_insert_new, METH_VARARGS,
     "insert_new(key_bytes, hash, word0, extra) -> (slot, state, created): takes "
     "the key's stripe itself, and grows the table (Core(grow=...)) when full."},
    {"delete", (PyCFunction)Core_delete, METH_VARARGS,
     "delete(slot, state, stripe, mode) -> (code, word0).  Caller holds stripe."},
    {"slot_info", (PyCFunction)Core_slot_info, METH_O,
     "slot_info(slot) -> (kind, state, key_bytes or None)."},
    {"published", (PyCFunction)Core_published, METH_NOARGS,
     "published() -> [(slot, state, key_bytes)]: a snapshot of the keys."},
    {"word0", (PyCFunction)Core_word0, METH_VARARGS,
     "word0(slot, state) -> int, or None if the slot changed."},
    {"stripe_holder", (PyCFunction)Core_stripe_holder, METH_O,
     "stripe_holder(i) -> id of the process holding stripe i (0: none)."},
    {"stripe_cas", (PyCFunction)Core_stripe_cas, METH_VARARGS,
     "stripe_cas(i, expected, desired) -> bool; desired -1 means this process."},
    {"stripe_release", (PyCFunction)Core_stripe_release, METH_O,
     "stripe_release(i) -> bool: release stripe i if this thread holds it."},
    {"stripe_acquire", (PyCFunction)Core_stripe_acquire, METH_O,
     "stripe_acquire(i) -> None, or (dropped, delta) when taken over and repaired."},
    {"_stripe_after_wait", (PyCFunction)Core_stripe_after_wait, METH_O,
     "_stripe_after_wait(i): stripe_acquire for a caller that took the bare semaphore."},
    {"attach_semaphores", (PyCFunction)(void (*)(void))Core_attach_semaphores,
     METH_VARARGS | METH_KEYWORDS,
     "attach_semaphores(names, poll, stall_timeout): the stripe semaphores and bound."},
    {"recount_live", (PyCFunction)Core_recount_live, METH_NOARGS,
     "recount_live() -> (old, new): the live count rebuilt from the stripes' counts."},
    {"dead_stripes", (PyCFunction)Core_dead_stripes, METH_NOARGS,
     "dead_stripes() -> [i]: stripes whose recorded holder is dead."},
    {"recount_stripe", (PyCFunction)Core_recount_stripe, METH_O,
     "recount_stripe(i) -> (claims_dropped, live_delta): recount a held stripe from the slots."},
    {"lock_acquire", (PyCFunction)Core_lock_acquire, METH_VARARGS,
     "lock_acquire(slot, state, blocking, timeout) -> code."},
    {"lock_release", (PyCFunction)Core_lock_release, METH_VARARGS,
     "lock_release(slot, state) -> code."},
    {"lock_owner", (PyCFunction)Core_lock_owner, METH_VARARGS,
     "lock_owner(slot, state) -> pid (0 free, -1 slot changed)."},
    {"key_acquire", (PyCFunction)(void (*)(void))Core_key_acquire, METH_FASTCALL,
     "key_acquire(key, blocking, timeout, shared) -> (code, fence): a Lock table's row lock."},
    {"key_release", (PyCFunction)(void (*)(void))Core_key_release, METH_FASTCALL,
     "key_release(key, shared) -> code."},
    {"rw_readers", (PyCFunction)Core_rw_readers, METH_VARARGS,
     "rw_readers(slot, state) -> [pid]."},
    {"record_read", (PyCFunction)Core_record_read, METH_VARARGS,
     "record_read(slot, state) -> bytes or None: a consistent snapshot."},
    {"record_get", (PyCFunction)Core_record_get, METH_O,
     "record_get(key) -> bytes or None: a consistent snapshot, by key, never creating."},
    {"record_begin", (PyCFunction)Core_record_begin, METH_O,
     "record_begin(key) -> (slot, state, recovered, bytes): lock and copy a record."},
    {"record_commit", (PyCFunction)(void (*)(void))Core_record_commit, METH_FASTCALL,
     "record_commit(slot, state, data or None) -> code: write (unless None), unlock."},
    {"counts", (PyCFunction)Core_counts, METH_NOARGS,
     "counts() -> (live, tombstones) from the header."},
    {"correct_tombstones", (PyCFunction)Core_correct_tombstones, METH_VARARGS,
     "correct_tombstones(count, tier=0) -> old count: set a tier's tombstone count."},
    {"compact", (PyCFunction)Core_compact, METH_NOARGS,
     "compact() -> int: sweep every tier's tombstones now; how many were made empty."},
    {"set_auto_compact", (PyCFunction)Core_set_auto_compact, METH_O,
     "set_auto_compact(on) -> bool: whether inserts sweep tombstones when due; the old setting."},
    {"probe_stats", (PyCFunction)Core_probe_stats, METH_VARARGS,
     "probe_stats(tier=0) -> dict: slot kinds, mean reach, mean slots a miss examines."},
    {"holding_stripe", (PyCFunction)(void (*)(void))Core_holding_stripe, METH_FASTCALL,
     "holding_stripe(i, fn, *args) -> fn(*args), called with stripe i held (released in C)."},
    {"holding_all_stripes", (PyCFunction)(void (*)(void))Core_holding_all_stripes, METH_FASTCALL,
     "holding_all_stripes(timeout, fn, *args) -> fn(*args), called with every stripe held "
     "(released in C); TimeoutError if a live holder keeps one past timeout."},
    {"stripe_live", (PyCFunction)Core_stripe_live, METH_O,
     "stripe_live(i) -> the live count kept by stripe i (all tiers)."},
    {"tiers", (PyCFunction)Core_tiers, METH_NOARGS,
     "tiers() -> [(nslots, capacity, live, tombstones)] of the attached tiers."},
    {"published_tiers", (PyCFunction)Core_published_tiers, METH_NOARGS,
     "published_tiers() -> the tier count tier 0's header publishes."},
    {"publish_tier", (PyCFunction)Core_publish_tier, METH_O,
     "publish_tier(k) -> count: CAS the published tier count from k to k + 1."},
    {"add_tier", (PyCFunction)Core_add_tier, METH_VARARGS,
     "add_tier(buffer, capacity) -> tiers attached: map the next tier's segment."},
    {"stats", (PyCFunction)Core_stats, METH_NOARGS,
     "stats() -> (inserts, deletes, max_capacity) from tier 0's header."},
    {"takeovers", (PyCFunction)Core_takeovers, METH_NOARGS,
     "takeovers() -> stripes this Core's C inserts took over from dead holders."},
    {"clear_cache", (PyCFunction)Core_clear_cache, METH_NOARGS,
     "Forget this process's key -> slot cache."},
    {"close", (PyCFunction)Core_close, METH_NOARGS,
     "Release the mapping; every later call raises ValueError."},
    {NULL}
};

PyDoc_STRVAR(CORE_DOC,
"Core(buffer, *, name, nslots, slot_size, key_size, extra_size, nstripes, capacity, "
"stripes_offset, data_offset, default_word0, default_extra, hash_function, seed, "
"resolve, insert, insert_with, cache_limit, max_capacity, grow, attach_tiers, "
"expiry_guard)\n--\n\n"
"The hash table inside one mapped segment (one per attached table and process).\n\n"
"buffer: the writable, 64-byte aligned mapping of the whole segment.\n"
"name: the table's name (str), for error messages.\n"
"nslots, slot_size, key_size, extra_size, nstripes, capacity, stripes_offset,\n"
"  data_offset: the header's geometry; it must follow geometry() and fit the\n"
"  buffer, else CorruptGeometry (a CorruptSegment and a ValueError).\n"
"default_word0: int64 word0 of a new key; default_extra: bytes of its extra\n"
"  area (extra_size bytes).\n"
"hash_function(encoded: bytes, seed: int) -> int: the key hash\n"
"  (xxhash.xxh3_64_intdigest); seed: the table's seed from its header.\n"
"resolve(key, create: bool) -> (slot, state, ...) or None: the slow path for\n"
"  keys the C encoder does not take (encode, hash, probe, insert if create).\n"
"insert(encoded: bytes, hash: int) -> (slot, state, created): insert a key\n"
"  the core found absent, under its stripe lock (raises TableFull).\n"
"insert_with(key, word0: int) -> bool: create key holding word0 if absent;\n"
"  True if this call created it (cas(..., set_on_not_exists=True)).\n"
"cache_limit: entries of the per-process key -> slot cache before it is cleared.\n"
"max_capacity: tier 0's header's (the table grows in tiers up to it).\n"
"grow(tiers_seen: int) -> None, or None: every tier is full (stripe not held):\n"
"  repair dead stripes, or add tier tiers_seen, or raise TableFull.\n"
"attach_tiers() -> None, or None: add_tier() every tier published but not\n"
"  attached.\n"
"expiry_guard: what keeps an expired key alive: 0 nothing (Counter), 1 a\n"
"  holder in word0 (Lock, Struct), 2 that or a live reader cell (rw Lock).");

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmdict._core.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = CORE_DOC,
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
};

/* my_id() -> this process's owner id, as the locks record it. */
static PyObject *
mod_my_id(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(my_id());
}

static PyObject *
mod_id_pid(PyObject *m, PyObject *arg)
{
    unsigned long long id = PyLong_AsUnsignedLongLongMask(arg);
    if (id == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLongLong(id_pid(id));
}

static PyObject *
mod_id_alive(PyObject *m, PyObject *arg)
{
    unsigned long long id = PyLong_AsUnsignedLongLongMask(arg);
    if (id == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(id_alive(id));
}

/* Aligned 8-byte atomic load/store on any writable buffer: used to publish
 * the header's magic last (release) and to read it (acquire). */
static int
buffer_word(PyObject *args, Py_buffer *view, unsigned long long *off,
            unsigned long long *value, int store)
{
    int ok = store ? PyArg_ParseTuple(args, "w*KK", view, off, value)
                   : PyArg_ParseTuple(args, "y*K", view, off);
    if (!ok)
        return -1;
    if (*off % 8 != 0 || view->len < 8 || *off > (unsigned long long)view->len - 8
            || ((uintptr_t)view->buf & 7) != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "offset must be 8-aligned and inside the buffer");
        return -1;
    }
    return 0;
}

static PyObject *
mod_load_u64(PyObject *m, PyObject *args)
{
    Py_buffer view;
    unsigned long long off, unused = 0;
    if (buffer_word(args, &view, &off, &unused, 0) < 0)
        return NULL;
    uint64_t v = load_acq((char *)view.buf + off);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *
mod_store_u64(PyObject *m, PyObject *args)
{
    Py_buffer view;
    unsigned long long off, value;
    if (buffer_word(args, &view, &off, &value, 1) < 0)
        return NULL;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    store_rel((char *)view.buf + off, value);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* The format, as Python sees it                                            */
/* ------------------------------------------------------------------------ */

/* tier_capacity(capacity, max_capacity, k) -> format.h's growth rule */
static PyObject *
mod_tier_capacity(PyObject *m, PyObject *args)
{
    unsigned long long capacity, max_capacity, k;
    if (!PyArg_ParseTuple(args, "KKK", &capacity, &max_capacity, &k))
        return NULL;
    return PyLong_FromUnsignedLongLong(shmdict_tier_capacity(capacity, max_capacity, k));
}

/* geometry(capacity, key_size, extra_size, nstripes) -> {nslots, slot_size,
 * stripes_offset, data_offset, size}: format.h's geometry rule, the one
 * place a table's shape is computed (the creator's header and the
 * attacher's check both come from it, and Core() checks against it). */
static PyObject *
mod_geometry(PyObject *m, PyObject *args)
{
    unsigned long long capacity, key_size, extra_size, nstripes;
    if (!PyArg_ParseTuple(args, "KKKK", &capacity, &key_size, &extra_size, &nstripes))
        return NULL;
    struct shmdict_geometry g;
    if (!shmdict_geometry(capacity, key_size, extra_size, nstripes, &g)) {
        PyErr_Format(PyExc_ValueError,
                     "no table has capacity %llu, key size %llu, value size %llu "
                     "and %llu stripes (each must be in range)",
                     capacity, key_size, extra_size, nstripes);
        return NULL;
    }
    return Py_BuildValue("{sKsKsKsKsK}",
                         "nslots", (unsigned long long)g.nslots,
                         "slot_size", (unsigned long long)g.slot_size,
                         "stripes_offset", (unsigned long long)g.stripes_offset,
                         "data_offset", (unsigned long long)g.data_offset,
                         "size", (unsigned long long)g.size);
}

/* A field of a format.h struct: its name, offset and `struct` module code. */
struct field_desc {
    const char *name;
    size_t offset;
    const char *code;
};

#define HEADER_FIELD(f, code) {#f, offsetof(struct shmdict_header, f), code}
#define STRIPE_FIELD(f, code) {#f, offsetof(struct shmdict_stripe, f), code}
#define SLOT_FIELD(f, code)   {#f, offsetof(struct shmdict_slot, f), code}

_Static_assert(SHMDICT_SPEC_MAX == 790, "the spec field's struct code below");
static const struct field_desc header_fields[] = {
    HEADER_FIELD(magic, "Q"), HEADER_FIELD(version, "I"), HEADER_FIELD(header_size, "I"),
    HEADER_FIELD(fingerprint, "Q"), HEADER_FIELD(capacity, "Q"), HEADER_FIELD(nslots, "Q"),
    HEADER_FIELD(slot_size, "Q"), HEADER_FIELD(key_size, "Q"), HEADER_FIELD(extra_size, "Q"),
    HEADER_FIELD(nstripes, "Q"), HEADER_FIELD(seed, "Q"), HEADER_FIELD(live, "q"),
    HEADER_FIELD(tombstones, "q"), HEADER_FIELD(admit, "Q"),
    HEADER_FIELD(stripes_offset, "Q"), HEADER_FIELD(data_offset, "Q"),
    HEADER_FIELD(created, "Q"), HEADER_FIELD(max_capacity, "Q"), HEADER_FIELD(tiers, "Q"),
    HEADER_FIELD(tier, "Q"), HEADER_FIELD(inserts, "Q"), HEADER_FIELD(deletes, "Q"),
    HEADER_FIELD(spec_length, "H"), HEADER_FIELD(spec, "790s"),
    HEADER_FIELD(fence, "Q"), HEADER_FIELD(expiry_used, "Q"),
    HEADER_FIELD(compact_mark, "Q"), HEADER_FIELD(compact_next, "Q"),
    HEADER_FIELD(compact_left, "Q"), HEADER_FIELD(reserved, "24s"),
    {NULL, 0, NULL}};
static const struct field_desc stripe_fields[] = {
    STRIPE_FIELD(holder, "Q"), STRIPE_FIELD(live, "q"), STRIPE_FIELD(journal, "Q"),
    STRIPE_FIELD(journal_slot, "Q"), STRIPE_FIELD(journal_state, "Q"),
    STRIPE_FIELD(journal_live, "q"), STRIPE_FIELD(takeovers, "Q"), {NULL, 0, NULL}};
static const struct field_desc slot_fields[] = {
    SLOT_FIELD(state, "Q"), SLOT_FIELD(word0, "q"), SLOT_FIELD(expires, "Q"),
    {NULL, 0, NULL}};

/* {name: (offset, struct code)} for one of the tables above. */
static PyObject *
fields_dict(const struct field_desc *fields)
{
    PyObject *d = PyDict_New();
    for (const struct field_desc *f = fields; d && f->name; f++) {
        PyObject *v = Py_BuildValue("(ns)", (Py_ssize_t)f->offset, f->code);
        if (v == NULL || PyDict_SetItemString(d, f->name, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

/* PyModule_AddObject that takes `obj` in every case (NULL: already failed),
 * as Python 3.13's PyModule_Add does. */
static int
module_add(PyObject *m, const char *name, PyObject *obj)
{
    if (obj == NULL)
        return -1;
    if (PyModule_AddObject(m, name, obj) < 0) {
        Py_DECREF(obj);
        return -1;
    }
    return 0;
}

/* Add the format's constants to the module; -1 with an exception set. */
static int
add_format_constants(PyObject *m)
{
    PyObject *kinds = Py_BuildValue("{isisisis}", KIND_EMPTY, "empty",
                                    KIND_CLAIMED, "claimed", KIND_PUBLISHED, "published",
                                    KIND_TOMBSTONE, "tombstone");
    if (module_add(m, "KIND_NAMES", kinds) < 0
            || module_add(m, "HEADER_FIELDS", fields_dict(header_fields)) < 0
            || module_add(m, "STRIPE_FIELDS", fields_dict(stripe_fields)) < 0
            || module_add(m, "SLOT_FIELDS", fields_dict(slot_fields)) < 0
            || module_add(m, "MAGIC", PyLong_FromUnsignedLongLong(SHMDICT_MAGIC)) < 0
            || module_add(m, "PID_MASK", PyLong_FromUnsignedLongLong(PID_MASK)) < 0
            || module_add(m, "WAITERS_BIT", PyLong_FromUnsignedLongLong(WAITERS_BIT)) < 0
            || module_add(m, "TAKEOVER_BIT", PyLong_FromUnsignedLongLong(TAKEOVER_BIT)) < 0)
        return -1;
    struct { const char *name; long value; } ints[] = {
        {"FORMAT_VERSION", SHMDICT_FORMAT_VERSION},
        {"HEADER_SIZE", SHMDICT_HEADER_SIZE},
        {"SPEC_MAX", SHMDICT_SPEC_MAX},
        {"STRIPE_SIZE", sizeof(struct shmdict_stripe)},
        {"SLOT_HEADER", SHMDICT_SLOT_HEADER},
        {"MAX_STRIPES", SHMDICT_MAX_STRIPES},
        {"MAX_TIERS", SHMDICT_MAX_TIERS},
        {"TIER_SHIFT", SHMDICT_TIER_SHIFT},
        {"MAX_KEY_SIZE", SHMDICT_MAX_KEY_SIZE},
        {"READER_CELLS", SHMDICT_READER_CELLS},
        {"RECORD_WRITING", SHMDICT_RECORD_WRITING},
        {"RECORD_CURRENT", SHMDICT_RECORD_CURRENT},
        {"KIND_EMPTY", KIND_EMPTY},
        {"KIND_CLAIMED", KIND_CLAIMED},
        {"KIND_PUBLISHED", KIND_PUBLISHED},
        {"KIND_TOMBSTONE", KIND_TOMBSTONE},
        {"GEN_SHIFT", GEN_SHIFT},
        {"GEN_MASK", GEN_MASK},
        {"KLEN_SHIFT", KLEN_SHIFT},
        {"KLEN_MASK", KLEN_MASK},
        {"TAG_SHIFT", TAG_SHIFT},
        {"EXPIRES_SHIFT", SHMDICT_EXPIRES_SHIFT},
        {"JOURNAL_INSERT", SHMDICT_JOURNAL_INSERT},
        {"JOURNAL_DELETE", SHMDICT_JOURNAL_DELETE},
        {"JOURNAL_TIER_SHIFT", SHMDICT_JOURNAL_TIER_SHIFT},
    };
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
        if (PyModule_AddIntConstant(m, ints[k].name, ints[k].value) < 0)
            return -1;
    return 0;
}

static PyMethodDef module_methods[] = {
    {"tier_capacity", mod_tier_capacity, METH_VARARGS,
     "tier_capacity(capacity, max_capacity, k) -> capacity of tier k (0: none)."},
    {"geometry", mod_geometry, METH_VARARGS,
     "geometry(capacity, key_size, extra_size, nstripes) -> dict: the table's shape."},
    {"encode_key", mod_encode_key, METH_VARARGS,
     "encode_key(key, cap) -> bytes or None: the C key encoder (None: not its case)."},
    {"load_u64", mod_load_u64, METH_VARARGS,
     "load_u64(buffer, offset) -> int: an acquire load of an aligned word."},
    {"store_u64", mod_store_u64, METH_VARARGS,
     "store_u64(buffer, offset, value): a release store of an aligned word."},
    {"my_id", mod_my_id, METH_NOARGS,
     "my_id() -> this process's owner id (pid | start time << 32), as locks record it."},
    {"id_pid", mod_id_pid, METH_O,
     "id_pid(id) -> the pid an owner id (or lock word) names; 0 when free."},
    {"bind_lock_handle", mod_bind_lock_handle, METH_VARARGS,
     "bind_lock_handle(handle_class, table_class): C acquire/release/__enter__/__exit__/"
     "locked/held_by_me on a LockHandle subclass with a _core slot, and C get/__getitem__ "
     "on its table class."},
    {"bind_record_update", mod_bind_record_update, METH_VARARGS,
     "bind_record_update(update_class, table_class): C __enter__/__exit__ on a Struct "
     "table's update() context manager class, and a C update() on its table class."},
    {"bind_counter_handle", mod_bind_counter_handle, METH_O,
     "bind_counter_handle(handle_class): a C add() on a CounterHandle subclass with a "
     "_core slot."},
    {"id_alive", mod_id_alive, METH_O,
     "id_alive(id) -> whether the process an owner id names is alive."},
    {NULL}
};

static int
core_module_traverse(PyObject *m, visitproc visit, void *arg)
{
    CoreState *st = (CoreState *)PyModule_GetState(m);
    Py_VISIT(st->TableFull);
    Py_VISIT(st->CorruptSegment);
    Py_VISIT(st->CorruptGeometry);
    Py_VISIT(st->TornRecord);
    return 0;
}

static int
core_module_clear(PyObject *m)
{
    CoreState *st = (CoreState *)PyModule_GetState(m);
    Py_CLEAR(st->TableFull);
    Py_CLEAR(st->CorruptSegment);
    Py_CLEAR(st->CorruptGeometry);
    Py_CLEAR(st->TornRecord);
    return 0;
}

static void
core_module_free(void *m)
{
    core_module_clear((PyObject *)m);
}

static struct PyModuleDef coremodule = {
    PyModuleDef_HEAD_INIT, "shmdict._core",
    "The atomic core of shmdict: probe loop, slot atomics, locks.",
    sizeof(CoreState), module_methods, NULL,
    core_module_traverse, core_module_clear, core_module_free,
};

/* Fill the module state: shmdict.errors' classes and this module's own. */
static int
init_exceptions(PyObject *m)
{
    CoreState *st = (CoreState *)PyModule_GetState(m);
    PyObject *errors = PyImport_ImportModule("shmdict.errors");
    if (errors == NULL)
        return -1;
    st->TableFull = PyObject_GetAttrString(errors, "TableFull");
    st->CorruptSegment = PyObject_GetAttrString(errors, "CorruptSegment");
    Py_DECREF(errors);
    if (st->TableFull == NULL || st->CorruptSegment == NULL)
        return -1;
    PyObject *bases = PyTuple_Pack(2, st->CorruptSegment, PyExc_ValueError);
    if (bases == NULL)
        return -1;
    st->CorruptGeometry = PyErr_NewExceptionWithDoc(
        "shmdict.backends.shm._core.CorruptGeometry",
        "Core() was given a geometry that cannot be right for its mapping (a "
        "corrupt header): a CorruptSegment, and a ValueError as before.", bases, NULL);
    Py_DECREF(bases);
    st->TornRecord = PyErr_NewExceptionWithDoc(
        "shmdict.backends.shm._core.TornRecord",
        "Private: writers kept completing writes faster than a lock-free read "
        "could copy the record; the Python layer reads it under the record lock.",
        NULL, NULL);
    if (st->CorruptGeometry == NULL || st->TornRecord == NULL)
        return -1;
    if (module_add(m, "CorruptGeometry", Py_NewRef(st->CorruptGeometry)) < 0
            || module_add(m, "TornRecord", Py_NewRef(st->TornRecord)) < 0)
        return -1;
    return 0;
}

PyMODINIT_FUNC
PyInit__core(void)
{
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&FloatCellsType) < 0
            || PyType_Ready(&RecordCodecType) < 0)
        return NULL;
    str_core = PyUnicode_InternFromString("_core");
    str_took = PyUnicode_InternFromString("_took");
    str_release_slow = PyUnicode_InternFromString("_release_slow");
    str_updating = PyUnicode_InternFromString("_updating");
    str_make_record = PyUnicode_InternFromString("_make_record");
    str_pack_record = PyUnicode_InternFromString("_pack_record");
    str_refuse = PyUnicode_InternFromString("_refuse_self_deadlock");
    str_recovered_warning = PyUnicode_InternFromString("_recovered_warning");
    str_lost_lock = PyUnicode_InternFromString("_lost_record_lock");
    if (str_core == NULL || str_took == NULL || str_release_slow == NULL
            || str_updating == NULL || str_make_record == NULL || str_pack_record == NULL
            || str_refuse == NULL || str_recovered_warning == NULL || str_lost_lock == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&coremodule);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FloatCellsType);
    if (PyModule_AddObject(m, "FloatCells", (PyObject *)&FloatCellsType) < 0) {
        Py_DECREF(&FloatCellsType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RecordCodecType);
    if (PyModule_AddObject(m, "RecordCodec", (PyObject *)&RecordCodecType) < 0) {
        Py_DECREF(&RecordCodecType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    pthread_atfork(NULL, NULL, reset_id_after_fork);
    my_id_cache = compute_id();    /* now, while descriptors are likely free */
    struct { const char *name; long value; } codes[] = {
        {"OK", RC_OK}, {"RECOVERED", RC_RECOVERED}, {"TIMEOUT", RC_TIMEOUT},
        {"STALE", RC_STALE}, {"NOT_OWNER", RC_NOT_OWNER}, {"BUSY", RC_BUSY}};
    for (size_t k = 0; k < sizeof codes / sizeof codes[0]; k++) {
        if (PyModule_AddIntConstant(m, codes[k].name, codes[k].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    if (add_format_constants(m) < 0 || init_exceptions(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
