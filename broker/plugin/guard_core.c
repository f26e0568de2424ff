/* camstack broker guard: the portable core. See guard_core.h. */
#include "guard_core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	struct entry *next;  /* hash chain */
	char *id;
	double msgs;         /* tokens left */
	double bytes;
	int64_t refill_ns;   /* tokens are as of this time */
	int64_t seen_ns;     /* last message */
	uint64_t kicks;      /* > 0: pinned, published */
	int dirty;           /* kicks changed since the last flush */
};

struct guard {
	guard_budget b;
	struct entry **slots;
	size_t nslots;       /* power of two */
	size_t count;
	size_t max_entries;
	size_t max_kicked;
	size_t kicked;
	uint64_t total;
	int total_dirty;
};

int guard_budget_valid(const guard_budget *b)
{
	if(!b) return -1;
	if(!(isfinite(b->msgs_per_s) && b->msgs_per_s > 0)) return -1;
	if(!(isfinite(b->bytes_per_s) && b->bytes_per_s > 0)) return -1;
	if(!(isfinite(b->burst_msgs) && b->burst_msgs >= 1)) return -1;
	if(!(isfinite(b->burst_bytes) && b->burst_bytes >= 1)) return -1;
	return 0;
}

guard *guard_new(const guard_budget *b, size_t max_entries, size_t max_kicked)
{
	guard *g;
	size_t n = 16;

	if(guard_budget_valid(b) || max_entries < 1 || max_kicked >= max_entries
			|| max_entries > ((size_t)1 << 24)){
		return NULL;
	}
	while(n < 2 * max_entries) n <<= 1;
	g = calloc(1, sizeof(*g));
	if(!g) return NULL;
	g->slots = calloc(n, sizeof(*g->slots));
	if(!g->slots){
		free(g);
		return NULL;
	}
	g->b = *b;
	g->nslots = n;
	g->max_entries = max_entries;
	g->max_kicked = max_kicked;
	return g;
}

void guard_free(guard *g)
{
	size_t i;
	struct entry *e, *next;

	if(!g) return;
	for(i = 0; i < g->nslots; i++){
		for(e = g->slots[i]; e; e = next){
			next = e->next;
			free(e->id);
			free(e);
		}
	}
	free(g->slots);
	free(g);
}

static size_t slot_of(const guard *g, const char *id)
{
	/* FNV-1a, 64 bit */
	uint64_t h = 1469598103934665603ULL;
	const unsigned char *p;

	for(p = (const unsigned char *)id; *p; p++){
		h ^= *p;
		h *= 1099511628211ULL;
	}
	return (size_t)(h & (uint64_t)(g->nslots - 1));
}

static struct entry *find(const guard *g, const char *id)
{
	struct entry *e;

	for(e = g->slots[slot_of(g, id)]; e; e = e->next){
		if(!strcmp(e->id, id)) return e;
	}
	return NULL;
}

static void refill(const guard *g, struct entry *e, int64_t now_ns)
{
	double dt;

	if(now_ns > e->refill_ns){
		dt = (double)(now_ns - e->refill_ns) / 1e9;
		e->msgs = fmin(g->b.burst_msgs, e->msgs + dt * g->b.msgs_per_s);
		e->bytes = fmin(g->b.burst_bytes, e->bytes + dt * g->b.bytes_per_s);
		e->refill_ns = now_ns;
	}
}

/* Would this entry's buckets be full at now_ns? Then dropping it changes nothing. */
static int is_full(const guard *g, const struct entry *e, int64_t now_ns)
{
	double dt = now_ns > e->refill_ns ? (double)(now_ns - e->refill_ns) / 1e9 : 0.0;

	return e->msgs + dt * g->b.msgs_per_s >= g->b.burst_msgs
		&& e->bytes + dt * g->b.bytes_per_s >= g->b.burst_bytes;
}

static void unlink_free(guard *g, size_t slot, struct entry *prev, struct entry *e)
{
	if(prev){
		prev->next = e->next;
	}else{
		g->slots[slot] = e->next;
	}
	free(e->id);
	free(e);
	g->count--;
}

/* Make room for one entry: drop every idle (full) unpinned entry; when none is, drop
 * the least recently seen unpinned one. max_kicked < max_entries, so one exists. */
static void evict(guard *g, int64_t now_ns)
{
	size_t i, lru_slot = 0;
	struct entry *e, *prev, *next, *lru = NULL, *lru_prev = NULL;
	size_t before = g->count;

	for(i = 0; i < g->nslots; i++){
		prev = NULL;
		for(e = g->slots[i]; e; e = next){
			next = e->next;
			if(e->kicks == 0 && is_full(g, e, now_ns)){
				unlink_free(g, i, prev, e);
			}else{
				prev = e;
			}
		}
	}
	if(g->count < before) return;
	for(i = 0; i < g->nslots; i++){
		prev = NULL;
		for(e = g->slots[i]; e; prev = e, e = e->next){
			if(e->kicks == 0 && (!lru || e->seen_ns < lru->seen_ns)){
				lru = e;
				lru_prev = prev;
				lru_slot = i;
			}
		}
	}
	if(lru) unlink_free(g, lru_slot, lru_prev, lru);
}

static struct entry *find_or_add(guard *g, const char *id, int64_t now_ns)
{
	struct entry *e = find(g, id);
	size_t slot;

	if(e) return e;
	if(g->count >= g->max_entries){
		evict(g, now_ns);
		if(g->count >= g->max_entries) return NULL;
	}
	e = calloc(1, sizeof(*e));
	if(!e) return NULL;
	e->id = strdup(id);
	if(!e->id){
		free(e);
		return NULL;
	}
	e->msgs = g->b.burst_msgs;
	e->bytes = g->b.burst_bytes;
	e->refill_ns = now_ns;
	e->seen_ns = now_ns;
	slot = slot_of(g, id);
	e->next = g->slots[slot];
	g->slots[slot] = e;
	g->count++;
	return e;
}

int guard_charge(guard *g, const char *id, uint64_t bytes, int64_t now_ns)
{
	struct entry *e;
	double need = (double)bytes;

	if(!g || !id) return GUARD_ERROR;
	e = find_or_add(g, id, now_ns);
	if(!e) return GUARD_ERROR;
	refill(g, e, now_ns);
	e->seen_ns = now_ns > e->seen_ns ? now_ns : e->seen_ns;
	if(e->msgs >= 1.0 && e->bytes >= need){
		e->msgs -= 1.0;
		e->bytes -= need;
		return GUARD_PASS;
	}
	g->total++;
	g->total_dirty = 1;
	if(e->kicks > 0 || g->kicked < g->max_kicked){
		if(e->kicks == 0) g->kicked++;
		e->kicks++;
		e->dirty = 1;
	}
	return GUARD_KICK;
}

uint64_t guard_total_kicks(const guard *g)
{
	return g ? g->total : 0;
}

uint64_t guard_client_kicks(const guard *g, const char *id)
{
	const struct entry *e;

	if(!g || !id) return 0;
	e = find(g, id);
	return e ? e->kicks : 0;
}

size_t guard_entries(const guard *g)
{
	return g ? g->count : 0;
}

size_t guard_kicked_entries(const guard *g)
{
	return g ? g->kicked : 0;
}

size_t guard_flush_changes(guard *g, guard_total_fn total, guard_client_fn client, void *ud)
{
	size_t i, calls = 0;
	struct entry *e;

	if(!g) return 0;
	if(g->total_dirty){
		g->total_dirty = 0;
		if(total){
			total(g->total, ud);
			calls++;
		}
	}
	for(i = 0; i < g->nslots; i++){
		for(e = g->slots[i]; e; e = e->next){
			if(e->dirty){
				e->dirty = 0;
				if(client){
					client(e->id, e->kicks, ud);
					calls++;
				}
			}
		}
	}
	return calls;
}
