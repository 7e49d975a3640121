/*
 * format.h -- the on-disk (on-/dev/shm) format of a shmdict segment.
 *
 * This header is the one owner of the segment format: every offset, size,
 * bit field and geometry rule of a table's segment is defined here, once.
 * The C core (_core.c) uses these structs and constants; Python gets every
 * number it needs from the _core module, which exports them from here
 * (offsetof, sizeof, the constants below), so no offset is written twice.
 *
 * It is plain C11 with no Python: another program (a C reader, a debugger
 * script) may include it to read a segment.
 *
 * A segment, in order (all words little-endian, native, naturally aligned):
 *
 *   struct shmdict_header   SHMDICT_HEADER_SIZE bytes at offset 0
 *   struct shmdict_stripe   nstripes records at header.stripes_offset
 *   slots                   nslots slots of slot_size bytes at
 *                           header.data_offset (64-byte aligned, so every
 *                           slot is 16-byte aligned for the 16-byte CAS)
 *   reach array             nslots uint16 right after the slots: reach[h]
 *                           is the farthest any key whose probe sequence
 *                           starts at slot h was ever placed from h
 *
 * Writers: the creator writes the whole header, magic last (a release store
 * after everything else), and never changes the geometry again; the counters
 * (live, tombstones, admit) are changed with atomics by every process.
 *
 * Compatibility: a change to any struct, constant or geometry rule below
 * bumps SHMDICT_FORMAT_VERSION; attachers refuse other versions.  (Modelled
 * on LMDB's lock file: a struct per record, a comment per field, and a
 * format version and magic beside them.)
 */
#ifndef SHMDICT_FORMAT_H
#define SHMDICT_FORMAT_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Signature                                                                */
/* ------------------------------------------------------------------------ */

/* "SHMDICT1" read as a little-endian uint64: the first word of a finished
 * segment (0 while its creator is still writing the header). */
#define SHMDICT_MAGIC           0x31544349444d4853ull
/* The version of everything in this file.  1: shmdict 0.1's format.  2: the
 * header's last cache line holds the fencing counter, stripe holder words
 * carry SHMDICT_TAKEOVER_BIT, and the semaphore, not the word, owns a stripe
 * (a version 1 process and a version 2 process must not share a table).
 * 3: online growth: the header holds max_capacity, the count of published
 * tiers and the segment's own tier index (see "Tiers" below), and the
 * inserts/deletes statistics; the spec area shrank by 40 bytes for them;
 * a Struct record is kept in two copies (see "A Struct slot's extra area");
 * per-key expiry: the slot header grew to 24 bytes (the expires word) and
 * the header's last line holds expiry_used.  4: each stripe record holds
 * its holder's journal (the operation in flight), and a takeover repairs
 * that operation only.  5: each stripe record counts the takeovers of the
 * stripe, so that a holder whose word was overwritten can tell a takeover
 * (the taker posts) from garbage (it posts itself). */
#define SHMDICT_FORMAT_VERSION  5u

/* ------------------------------------------------------------------------ */
/* The header (offset 0)                                                    */
/* ------------------------------------------------------------------------ */

#define SHMDICT_HEADER_SIZE     1024u   /* header bytes, stripes follow       */
#define SHMDICT_SPEC_MAX        790u    /* bytes of layout JSON that fit      */

struct shmdict_header {
    uint64_t magic;          /* SHMDICT_MAGIC, stored last by the creator   */
    uint32_t version;        /* SHMDICT_FORMAT_VERSION                      */
    uint32_t header_size;    /* SHMDICT_HEADER_SIZE                         */
    uint64_t fingerprint;    /* xxh3_64 of spec[0:spec_length] (unseeded)   */
    uint64_t capacity;       /* keys guaranteed to fit (TableFull beyond)   */
    uint64_t nslots;         /* slots in the slot array, > capacity         */
    uint64_t slot_size;      /* bytes per slot, a multiple of 16            */
    uint64_t key_size;       /* max encoded key bytes, <= SHMDICT_MAX_KEY_SIZE */
    uint64_t extra_size;     /* bytes of a slot's extra value area (8n)     */
    uint64_t nstripes;       /* stripe records and semaphores, 1..MAX       */
    uint64_t seed;           /* the table's xxh3_64 hash seed (random)      */
    int64_t  live;           /* reserved + published keys (admission)       */
    int64_t  tombstones;     /* tombstoned slots (statistics only)          */
    uint64_t admit;          /* owner id holding the admission spinlock     */
    uint64_t stripes_offset; /* where the stripe records start              */
    uint64_t data_offset;    /* where the slot array starts                 */
    uint64_t created;        /* creation time, Unix seconds                 */
    uint64_t max_capacity;   /* the table grows (in tiers) up to this many
                                keys; == capacity: it never grows           */
    uint64_t tiers;          /* tier 0 only: tiers published, this one
                                included (1 until the first growth); bumped
                                by CAS once a tier's segment is complete    */
    uint64_t tier;           /* this segment's tier index (0: the table's
                                own segment, NAME; k >= 1: NAME+tK)         */
    uint64_t inserts;        /* tier 0 only: keys ever inserted (statistics,
                                relaxed atomic add, in every tier's insert) */
    uint64_t deletes;        /* tier 0 only: slots ever tombstoned by a
                                delete (statistics, relaxed atomic add)     */
    uint16_t spec_length;    /* bytes of spec that are used                 */
    char     spec[SHMDICT_SPEC_MAX]; /* the layout, as compact JSON         */
    /* The last cache line, alone: every exclusive lock acquire of the table
     * takes the next fence, so it must not share a line with the counts. */
    uint64_t fence;          /* the last fencing token handed out (Lock)    */
    uint64_t expiry_used;    /* 0 until a key of the table is first given a
                                deadline (then 1, never cleared): len() and
                                a full insert look for expired keys only
                                when it is set (tier 0's word counts)       */
    /* Compaction of this tier's tombstones (_core.c, "Compaction"): hints
     * only, written under every stripe; garbage costs a sweep, never a key. */
    uint64_t compact_mark;   /* tier 0's deletes count when the last sweep
                                of this tier finished (an insert sweeps
                                again nslots/8 deletes later)               */
    uint64_t compact_next;   /* the slot the sweep in progress goes on from */
    uint64_t compact_left;   /* slots that sweep still has to cover (0: no
                                sweep in progress)                          */
    uint64_t reserved[3];    /* zero                                        */
};

_Static_assert(offsetof(struct shmdict_header, magic) == 0, "header.magic");
_Static_assert(offsetof(struct shmdict_header, version) == 8, "header.version");
_Static_assert(offsetof(struct shmdict_header, header_size) == 12, "header.header_size");
_Static_assert(offsetof(struct shmdict_header, fingerprint) == 16, "header.fingerprint");
_Static_assert(offsetof(struct shmdict_header, capacity) == 24, "header.capacity");
_Static_assert(offsetof(struct shmdict_header, nslots) == 32, "header.nslots");
_Static_assert(offsetof(struct shmdict_header, slot_size) == 40, "header.slot_size");
_Static_assert(offsetof(struct shmdict_header, key_size) == 48, "header.key_size");
_Static_assert(offsetof(struct shmdict_header, extra_size) == 56, "header.extra_size");
_Static_assert(offsetof(struct shmdict_header, nstripes) == 64, "header.nstripes");
_Static_assert(offsetof(struct shmdict_header, seed) == 72, "header.seed");
_Static_assert(offsetof(struct shmdict_header, live) == 80, "header.live");
_Static_assert(offsetof(struct shmdict_header, tombstones) == 88, "header.tombstones");
_Static_assert(offsetof(struct shmdict_header, admit) == 96, "header.admit");
_Static_assert(offsetof(struct shmdict_header, stripes_offset) == 104, "header.stripes_offset");
_Static_assert(offsetof(struct shmdict_header, data_offset) == 112, "header.data_offset");
_Static_assert(offsetof(struct shmdict_header, created) == 120, "header.created");
_Static_assert(offsetof(struct shmdict_header, max_capacity) == 128, "header.max_capacity");
_Static_assert(offsetof(struct shmdict_header, tiers) == 136, "header.tiers");
_Static_assert(offsetof(struct shmdict_header, tier) == 144, "header.tier");
_Static_assert(offsetof(struct shmdict_header, inserts) == 152, "header.inserts");
_Static_assert(offsetof(struct shmdict_header, deletes) == 160, "header.deletes");
_Static_assert(offsetof(struct shmdict_header, spec_length) == 168, "header.spec_length");
_Static_assert(offsetof(struct shmdict_header, spec) == 170, "header.spec");
_Static_assert(offsetof(struct shmdict_header, fence) == 960, "header.fence");
_Static_assert(offsetof(struct shmdict_header, expiry_used) == 968, "header.expiry_used");
_Static_assert(offsetof(struct shmdict_header, compact_mark) == 976, "header.compact_mark");
_Static_assert(offsetof(struct shmdict_header, compact_left) == 992, "header.compact_left");
_Static_assert(sizeof(struct shmdict_header) == SHMDICT_HEADER_SIZE, "header size");

/* ------------------------------------------------------------------------ */
/* A stripe record (one cache line each, at header.stripes_offset)          */
/* ------------------------------------------------------------------------ */

struct shmdict_stripe {
    uint64_t holder;         /* owner id of the process holding the stripe,
                                0: none (set by CAS right after sem_wait)   */
    int64_t  live;           /* published keys whose hash is in the stripe,
                                changed only by the holder, under admit     */
    /* The journal: the insert or delete the holder is in the middle of, so
     * that whoever takes the stripe over from a dead holder repairs that
     * one operation instead of walking the table (see "The stripe journal"
     * below).  Written only by the holder; used in tier 0's records only. */
    uint64_t journal;        /* 0: no operation in flight; else the op
                                (SHMDICT_JOURNAL_*) | tier << 8, stored last
                                (release) when an operation starts and
                                cleared first when it ends                  */
    uint64_t journal_slot;   /* the tier-local slot the op works on; for an
                                insert, the candidate slot about to be
                                claimed (SHMDICT_JOURNAL_NO_SLOT: none yet) */
    uint64_t journal_state;  /* that slot's state word when chosen (insert:
                                the EMPTY or TOMBSTONE word the claim
                                replaces; delete: the PUBLISHED word)       */
    int64_t  journal_live;   /* the stripe's live count in that tier before
                                the operation                               */
    uint64_t takeovers;      /* incremented by every waiter right before it
                                takes the stripe over from its recorded
                                holder: a holder that finds its word gone
                                at release posts only if this has not moved
                                since it took the stripe (else the taker
                                posts)                                      */
    uint64_t reserved[1];    /* padding to a cache line (zero)              */
};

_Static_assert(offsetof(struct shmdict_stripe, holder) == 0, "stripe.holder");
_Static_assert(offsetof(struct shmdict_stripe, live) == 8, "stripe.live");
_Static_assert(offsetof(struct shmdict_stripe, journal) == 16, "stripe.journal");
_Static_assert(offsetof(struct shmdict_stripe, journal_slot) == 24, "stripe.journal_slot");
_Static_assert(offsetof(struct shmdict_stripe, journal_state) == 32, "stripe.journal_state");
_Static_assert(offsetof(struct shmdict_stripe, journal_live) == 40, "stripe.journal_live");
_Static_assert(offsetof(struct shmdict_stripe, takeovers) == 48, "stripe.takeovers");
_Static_assert(sizeof(struct shmdict_stripe) == 64, "stripe size");

/* The stripe journal.  A holder that inserts or deletes a key writes, in
 * this order, journal_live (the stripe's count in the key's tier),
 * journal_state and journal_slot, then journal = op | tier << 8; it clears
 * journal when the slot and both counts are done.  An insert rewrites
 * journal_state then journal_slot before each claim it tries.  Whoever takes
 * the stripe over from a dead holder (or finds its holder word garbage)
 * reads the journal and settles that one operation:
 *
 *   insert: a slot at journal_slot CLAIMED by this stripe is the dead
 *           holder's unpublished claim: it becomes a TOMBSTONE.  The insert
 *           completed iff that slot is PUBLISHED with generation
 *           gen(journal_state) + 1 and a key of this stripe (only this
 *           stripe's holder publishes its keys, and the candidate was free
 *           when chosen).  The stripe's count is set to journal_live, plus
 *           1 if it completed.
 *   delete: completed iff the slot's state is no longer journal_state.  The
 *           count is set to journal_live, minus 1 if it completed.
 *
 * A journal that does not validate (unknown op, tier or slot out of range,
 * a count outside 0..capacity) is garbage: the taker recounts the stripe
 * from the slots of every tier instead, as `shmdict check` does. */
#define SHMDICT_JOURNAL_INSERT  1u
#define SHMDICT_JOURNAL_DELETE  2u
#define SHMDICT_JOURNAL_OP_MASK 0xffu
#define SHMDICT_JOURNAL_TIER_SHIFT 8
#define SHMDICT_JOURNAL_NO_SLOT (~0ull)

/* At most this many stripes (and semaphores) per table. */
#define SHMDICT_MAX_STRIPES     4096u

/* ------------------------------------------------------------------------ */
/* A slot (slot_size bytes, 16-byte aligned)                                */
/* ------------------------------------------------------------------------ */

/* [ state | word0 | expires | key bytes (key_size rounded up to 8) | extra
 * | pad ].  state and word0 are adjacent and 16-byte aligned so that the
 * pair can be changed by one 16-byte compare-and-swap. */
struct shmdict_slot {
    uint64_t state;          /* the state word, see SHMDICT_STATE_* below   */
    int64_t  word0;          /* the first value word: a Counter's value, a
                                Lock's or Struct's lock word (owner id)     */
    uint64_t expires;        /* the key's deadline, see "Expiry" below      */
    unsigned char key[];     /* the encoded key, zero-padded; then extra    */
};

_Static_assert(offsetof(struct shmdict_slot, state) == 0, "slot.state");
_Static_assert(offsetof(struct shmdict_slot, word0) == 8, "slot.word0");
_Static_assert(offsetof(struct shmdict_slot, expires) == 16, "slot.expires");
_Static_assert(offsetof(struct shmdict_slot, key) == 24, "slot.key");
_Static_assert(sizeof(struct shmdict_slot) == 24, "slot header size");

#define SHMDICT_SLOT_HEADER     24u     /* bytes before the key             */

/* Expiry.  A slot's expires word is
 *
 *   bits  0..17  the generation (state bits 2..19) of the publish it
 *                belongs to: an inserter writes it before publishing, so a
 *                compare-and-swap of it against a value carrying the
 *                generation a caller looked up fails once the slot was
 *                reused by another key (no stripe is needed to change it)
 *   bits 18..63  the deadline in units of 2^18 ns (262 us) of
 *                CLOCK_MONOTONIC, rounded up (a key never expires early);
 *                0: the key never expires; 1 (SHMDICT_EXPIRES_RECLAIMING):
 *                a reclaimer took the expired key, which tombstones it next
 *
 * A published key whose deadline has passed is absent for every verb; its
 * slot is tombstoned (as a delete does, counts included) under the key's
 * stripe by the next insert of the same key, or by an insert that finds
 * the table full.  A key whose lock word (Lock, Struct) or reader cells
 * (rw Lock) name a holder does not expire until it is free.
 * CLOCK_MONOTONIC counts from boot and is the same in every process of the
 * host, which is what a table's processes are: a deadline means nothing
 * after a reboot (nor does a table in /dev/shm survive one). */
#define SHMDICT_EXPIRES_SHIFT       18
#define SHMDICT_EXPIRES_GEN_MASK    0x3ffffull
#define SHMDICT_EXPIRES_RECLAIMING  1ull

#define SHMDICT_SLOT_ALIGN      16u     /* slot_size is a multiple of this  */
#define SHMDICT_AREA_ALIGN      8u      /* the key area is rounded to this  */
#define SHMDICT_DATA_ALIGN      64u     /* data_offset is a multiple of this */
#define SHMDICT_REACH_SIZE      2u      /* bytes of one reach entry (uint16) */
#define SHMDICT_REACH_UNBOUNDED 0xffffu /* reach entry: probe the whole table */

/* The state word, from the low bits up:
 *
 *   bits  0..1   kind: EMPTY, CLAIMED, PUBLISHED, TOMBSTONE
 *   bits  2..19  generation, bumped on every publish (defeats ABA on reuse)
 *   bits 20..31  key length in bytes
 *   bits 32..63  PUBLISHED: the high 32 bits of the key's hash (its tag)
 *                CLAIMED:   the index of the stripe whose holder claimed it
 */
#define SHMDICT_KIND_MASK       0x3u
#define SHMDICT_KIND_EMPTY      0u      /* never used: ends every probe     */
#define SHMDICT_KIND_CLAIMED    1u      /* being written by an inserter     */
#define SHMDICT_KIND_PUBLISHED  2u      /* holds a key                      */
#define SHMDICT_KIND_TOMBSTONE  3u      /* held a key; reusable by inserts  */
#define SHMDICT_GEN_SHIFT       2
#define SHMDICT_GEN_MASK        0x3ffffu
#define SHMDICT_KLEN_SHIFT      20
#define SHMDICT_KLEN_MASK       0xfffu
#define SHMDICT_TAG_SHIFT       32
_Static_assert(SHMDICT_EXPIRES_GEN_MASK == SHMDICT_GEN_MASK,
               "the expires word holds a whole generation");

/* The longest key a state word can describe. */
#define SHMDICT_MAX_KEY_SIZE    SHMDICT_KLEN_MASK

/* Owner ids and lock words (stripe holders, header.admit, a Lock's or
 * Struct's word0, rw reader cells):
 *
 *   bits  0..29  pid (Linux pids are below 2^22)
 *   bit   30     "waiters" (lock words only): someone sleeps on the futex,
 *                which is the low 32 bits, so it changes whenever it matters
 *   bit   31     "takeover" (stripe holder words only)
 *   bits 32..63  the low 32 bits of the owner's start time (clock ticks
 *                since boot, /proc/PID/stat field 22), so that a reused
 *                pid is not taken for the owner
 * 0 means "nobody".  Liveness by pid assumes one PID namespace. */
#define SHMDICT_PID_MASK        0x3fffffffull
#define SHMDICT_WAITERS_BIT     0x40000000ull
/* Stripe holder words only: the holder took the stripe over (from a holder
 * stopped or killed between its wait and its CAS) without a semaphore
 * count of its own; see _core.c, "Stripe locks". */
#define SHMDICT_TAKEOVER_BIT    0x80000000ull
#define SHMDICT_START_SHIFT     32

/* An rw Lock's extra area: this many reader cells (owner ids). */
#define SHMDICT_READER_CELLS    8u

/* A Struct slot's extra area (word0 is the record lock, an owner id):
 *
 *   uint64_t seq            the record's sequence word, below
 *   copy 0                  R bytes: the packed fields, zero-padded to 8
 *   copy 1                  R bytes
 *
 * so extra_size = 8 + 2 * R, R a multiple of 8 (the largest record is
 * ((1 MiB - 8) / 2) rounded down to 8 = 524,280 bytes).  One copy is
 * current, seq bit 1 says which; the other is where the next write goes:
 *
 *   bit  0       SHMDICT_RECORD_WRITING: a writer is filling the other copy
 *                (still set if it died doing so: harmless)
 *   bit  1       SHMDICT_RECORD_CURRENT: the current copy (0 or 1)
 *   bits 2..63   the count of completed writes (with bit 1, seq / 2)
 *
 * A writer (holding the record lock) stores seq | WRITING, fills the copy
 * that is not current, and publishes it with one release store of
 * (seq | WRITING) + 1, which clears WRITING, flips CURRENT and counts the
 * write.  A writer killed at any point leaves the current copy untouched.
 * A reader copies the current copy between two loads of seq and keeps it
 * unless the copy it read may have been written meanwhile, i.e. unless a
 * later writer started on it: seq advanced by more than 2 (from an even
 * seq) or 1 (from an odd one).  A new key's seq is 0: copy 0 current. */
#define SHMDICT_RECORD_WRITING  0x1ull
#define SHMDICT_RECORD_CURRENT  0x2ull

/* ------------------------------------------------------------------------ */
/* Geometry: a table's shape from its four free parameters                  */
/* ------------------------------------------------------------------------ */

struct shmdict_geometry {
    uint64_t nslots;         /* max(capacity + 1, ceil(capacity / 0.75))    */
    uint64_t slot_size;      /* SLOT_HEADER + key area + extra, to 16       */
    uint64_t stripes_offset; /* SHMDICT_HEADER_SIZE                         */
    uint64_t data_offset;    /* after the stripe records, to 64             */
    uint64_t size;           /* bytes of the whole segment                  */
};

static inline uint64_t shmdict_round_up(uint64_t n, uint64_t to)
{ return (n + to - 1) / to * to; }

/* Fill *g for a table of `capacity` keys of at most `key_size` bytes, with
 * `extra_size` value bytes per slot and `nstripes` stripes.  The load
 * factor stays at most 0.75, and one slot is always empty, so probes stay
 * short.  Returns 0 when the parameters are out of range (then *g is
 * untouched); callers check ranges first and treat 0 as corruption. */
static inline int
shmdict_geometry(uint64_t capacity, uint64_t key_size, uint64_t extra_size,
                 uint64_t nstripes, struct shmdict_geometry *g)
{
    if (capacity == 0 || capacity > (1ull << 40) || key_size == 0
            || key_size > SHMDICT_MAX_KEY_SIZE || extra_size % 8 != 0
            || extra_size > (1u << 20) || nstripes == 0 || nstripes > SHMDICT_MAX_STRIPES)
        return 0;
    uint64_t by_load = (capacity * 4 + 2) / 3;     /* ceil(capacity * 4 / 3) */
    g->nslots = by_load > capacity + 1 ? by_load : capacity + 1;
    g->slot_size = shmdict_round_up(SHMDICT_SLOT_HEADER
                                    + shmdict_round_up(key_size, SHMDICT_AREA_ALIGN)
                                    + extra_size, SHMDICT_SLOT_ALIGN);
    g->stripes_offset = SHMDICT_HEADER_SIZE;
    g->data_offset = shmdict_round_up(SHMDICT_HEADER_SIZE
                                      + nstripes * sizeof(struct shmdict_stripe),
                                      SHMDICT_DATA_ALIGN);
    g->size = g->data_offset + g->nslots * (g->slot_size + SHMDICT_REACH_SIZE);
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Tiers: online growth                                                     */
/* ------------------------------------------------------------------------ */

/* A table opened with max_capacity > capacity grows in tiers.  Tier 0 is
 * the table's segment; tier k >= 1 is another segment of this same format
 * (same spec, seed, key_size, extra_size and nstripes; its own header,
 * stripe records, slots and reach array) named NAME+tK ('+' is never in a
 * table name, so a tier never collides with a table).  Keys never move
 * between tiers: a lookup probes tier 0, 1, ... in order; an insert takes
 * the first tier with room.  Only tier 0's stripe holder words (and
 * semaphores) are used: one stripe lock covers a hash in every tier.  Each
 * tier keeps its own live/tombstone counts, admission lock and per-stripe
 * live counts (header.live of tier k counts tier k's keys).
 *
 * A slot index outside the segment (the per-process cache, the core's
 * methods) is (tier << SHMDICT_TIER_SHIFT) | local index. */
#define SHMDICT_MAX_TIERS       64u
#define SHMDICT_TIER_SHIFT      48

/* The capacity of tier k >= 1 of a table created with `capacity` and
 * `max_capacity`: the total of the tiers before it (so the table doubles),
 * capped so that the total never passes max_capacity.  0: there is no tier
 * k (the table is at max_capacity, or k is out of range). */
static inline uint64_t
shmdict_tier_capacity(uint64_t capacity, uint64_t max_capacity, uint64_t k)
{
    if (k == 0)
        return capacity;
    if (k >= SHMDICT_MAX_TIERS || max_capacity < capacity)
        return 0;
    uint64_t total = capacity, next = 0;
    for (uint64_t j = 1; j <= k; j++) {
        uint64_t room = max_capacity - total;
        next = total < room ? total : room;
        total += next;
    }
    return next;
}

#endif /* SHMDICT_FORMAT_H */
