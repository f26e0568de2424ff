/*
 * camstack broker guard: the portable core (no Mosquitto headers).
 *
 * A per-client token bucket on messages and bytes, each with a sustained rate and a
 * burst. A client whose next message does not fit both buckets is to be disconnected
 * by the caller (the Mosquitto glue in guard_plugin.c); its state is kept so that a
 * client that reconnects and keeps flooding is disconnected again at once.
 *
 * The table of clients is bounded: when it is full, entries whose buckets have
 * refilled completely are dropped first (that loses nothing: a new entry starts
 * full), then the least recently seen one. Clients that were ever disconnected keep
 * their entry and their count, up to max_kicked of them, so the counts can be
 * published; past that they are still metered and counted in the total.
 *
 * Single-threaded, like the Mosquitto 2.0 broker loop. Times are monotonic ns.
 */
#ifndef CAMSTACK_GUARD_CORE_H
#define CAMSTACK_GUARD_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
	double msgs_per_s;   /* sustained messages per second (> 0) */
	double burst_msgs;   /* bucket size in messages (>= 1) */
	double bytes_per_s;  /* sustained payload bytes per second (> 0) */
	double burst_bytes;  /* bucket size in bytes (>= the largest message allowed) */
} guard_budget;

typedef struct guard guard;

/* Outcome of guard_charge. */
enum {
	GUARD_PASS = 0,   /* the message fits; it was charged */
	GUARD_KICK = 1,   /* over budget: disconnect the client, nothing was charged */
	GUARD_ERROR = -1  /* bad argument or out of memory: the caller decides (fail open) */
};

/* Validate a budget: returns 0 when usable, -1 otherwise. */
int guard_budget_valid(const guard_budget *b);

/* A new guard; NULL on a bad budget, max_entries < 1, max_kicked > max_entries or
 * out of memory. */
guard *guard_new(const guard_budget *b, size_t max_entries, size_t max_kicked);
void guard_free(guard *g);

/* Charge one message of `bytes` payload bytes to client `id` at time `now_ns`. */
int guard_charge(guard *g, const char *id, uint64_t bytes, int64_t now_ns);

/* Counters. */
uint64_t guard_total_kicks(const guard *g);
uint64_t guard_client_kicks(const guard *g, const char *id); /* 0 when unknown */
size_t guard_entries(const guard *g);
size_t guard_kicked_entries(const guard *g);

/* Report changes since the last call: `total` is called once with the total when it
 * changed, `client` once per client whose count changed. Returns the number of calls.
 * Either callback may be NULL. */
typedef void (*guard_total_fn)(uint64_t total, void *ud);
typedef void (*guard_client_fn)(const char *id, uint64_t kicks, void *ud);
size_t guard_flush_changes(guard *g, guard_total_fn total, guard_client_fn client, void *ud);

#ifdef __cplusplus
}
#endif
#endif
