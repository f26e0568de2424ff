/* Host unit tests of guard_core.c (run under ASan/UBSan by `make test`). */
#include "guard_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
static int checks;

#define CHECK(cond) do { checks++; if(!(cond)){ failures++; \
	fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while(0)

#define S(x) ((int64_t)(x) * 1000000000LL)
#define MS(x) ((int64_t)(x) * 1000000LL)

static const guard_budget B = {10.0, 20.0, 1000.0, 4000.0};

static void test_budget_validation(void)
{
	guard_budget bad = B;

	CHECK(guard_budget_valid(&B) == 0);
	CHECK(guard_budget_valid(NULL) == -1);
	bad.msgs_per_s = 0; CHECK(guard_budget_valid(&bad) == -1);
	bad = B; bad.bytes_per_s = -1; CHECK(guard_budget_valid(&bad) == -1);
	bad = B; bad.burst_msgs = 0.5; CHECK(guard_budget_valid(&bad) == -1);
	bad = B; bad.burst_bytes = 0; CHECK(guard_budget_valid(&bad) == -1);
	bad = B; bad.msgs_per_s = 1.0 / 0.0; CHECK(guard_budget_valid(&bad) == -1);
	bad = B; bad.burst_bytes = 0.0 / 0.0; CHECK(guard_budget_valid(&bad) == -1);
	CHECK(guard_new(&bad, 10, 1) == NULL);
	CHECK(guard_new(&B, 0, 0) == NULL);
	CHECK(guard_new(&B, 4, 4) == NULL); /* max_kicked must stay below max_entries */
	guard_free(NULL);
}

static void test_burst_then_rate(void)
{
	guard *g = guard_new(&B, 16, 4);
	int i;

	/* A fresh client may spend its whole burst at once... */
	for(i = 0; i < 20; i++) CHECK(guard_charge(g, "cam01", 10, 0) == GUARD_PASS);
	/* ...not one more message. */
	CHECK(guard_charge(g, "cam01", 10, 0) == GUARD_KICK);
	CHECK(guard_total_kicks(g) == 1 && guard_client_kicks(g, "cam01") == 1);
	/* Another client is not affected. */
	CHECK(guard_charge(g, "cam02", 10, 0) == GUARD_PASS);
	/* 100 ms later one message (10/s) has been earned back, not two. */
	CHECK(guard_charge(g, "cam01", 10, MS(100)) == GUARD_PASS);
	CHECK(guard_charge(g, "cam01", 10, MS(100)) == GUARD_KICK);
	/* Sustained at exactly the rate for 10 s: never kicked. */
	for(i = 1; i <= 100; i++) CHECK(guard_charge(g, "cam01", 10, MS(100) + MS(100) * i) == GUARD_PASS);
	CHECK(guard_client_kicks(g, "cam01") == 2);
	/* The bucket never holds more than the burst, however long the pause. */
	for(i = 0; i < 20; i++) CHECK(guard_charge(g, "cam01", 1, S(1000)) == GUARD_PASS);
	CHECK(guard_charge(g, "cam01", 1, S(1000)) == GUARD_KICK);
	guard_free(g);
}

static void test_bytes_budget(void)
{
	guard *g = guard_new(&B, 16, 4);

	CHECK(guard_charge(g, "c", 4000, 0) == GUARD_PASS);
	CHECK(guard_charge(g, "c", 1, 0) == GUARD_KICK);
	/* 1 s later 1000 bytes are back. */
	CHECK(guard_charge(g, "c", 1001, S(1)) == GUARD_KICK);
	CHECK(guard_charge(g, "c", 1000, S(1)) == GUARD_PASS);
	/* A message larger than the burst never fits. */
	CHECK(guard_charge(g, "d", 4001, S(100)) == GUARD_KICK);
	CHECK(guard_charge(g, "d", UINT64_MAX, S(100)) == GUARD_KICK);
	/* A kick charges nothing: the small message still fits. */
	CHECK(guard_charge(g, "d", 4000, S(100)) == GUARD_PASS);
	/* Zero-length payloads still cost a message. */
	guard_free(g);
}

static void test_clock_going_backwards_is_harmless(void)
{
	guard *g = guard_new(&B, 16, 4);
	int i;

	for(i = 0; i < 20; i++) CHECK(guard_charge(g, "c", 0, S(10)) == GUARD_PASS);
	CHECK(guard_charge(g, "c", 0, S(5)) == GUARD_KICK);
	CHECK(guard_charge(g, "c", 0, S(10) + MS(100)) == GUARD_PASS);
	guard_free(g);
}

static void test_state_survives_and_table_is_bounded(void)
{
	guard *g = guard_new(&B, 8, 2);
	char id[32];
	int i;

	/* The flooder is kicked; it stays known (pinned) however many others come by. */
	for(i = 0; i < 20; i++) guard_charge(g, "flood", 0, 0);
	CHECK(guard_charge(g, "flood", 0, 0) == GUARD_KICK);
	for(i = 0; i < 1000; i++){
		snprintf(id, sizeof(id), "dev%d", i);
		CHECK(guard_charge(g, id, 0, MS(i)) == GUARD_PASS);
		CHECK(guard_entries(g) <= 8);
	}
	/* Reconnecting a moment later does not give it a fresh bucket. */
	CHECK(guard_charge(g, "flood", 0, MS(1000)) != GUARD_ERROR);
	CHECK(guard_client_kicks(g, "flood") == 1);
	guard_free(g);

	/* Active (not full) entries are not dropped while idle full ones exist. */
	g = guard_new(&B, 4, 1);
	for(i = 0; i < 20; i++) guard_charge(g, "busy", 0, 0);
	guard_charge(g, "idle1", 0, 0);
	guard_charge(g, "idle2", 0, 0);
	guard_charge(g, "idle3", 0, 0);
	/* 1 s later: the idle ones have refilled, busy has 10 of 20 back. */
	CHECK(guard_charge(g, "new", 0, S(1)) == GUARD_PASS);
	CHECK(guard_entries(g) == 2);
	for(i = 0; i < 10; i++) CHECK(guard_charge(g, "busy", 0, S(1)) == GUARD_PASS);
	CHECK(guard_charge(g, "busy", 0, S(1)) == GUARD_KICK);
	guard_free(g);
}

static void test_kicked_clients_bounded(void)
{
	guard *g = guard_new(&B, 8, 2);
	const char *ids[] = {"a", "b", "c"};
	int i, k;

	for(k = 0; k < 3; k++){
		for(i = 0; i < 20; i++) guard_charge(g, ids[k], 0, 0);
		CHECK(guard_charge(g, ids[k], 0, 0) == GUARD_KICK);
	}
	CHECK(guard_total_kicks(g) == 3);
	CHECK(guard_kicked_entries(g) == 2);
	CHECK(guard_client_kicks(g, "a") == 1 && guard_client_kicks(g, "b") == 1);
	CHECK(guard_client_kicks(g, "c") == 0);
	guard_free(g);
}

struct seen {
	uint64_t total;
	int totals;
	int clients;
	char last[32];
	uint64_t last_kicks;
};

static void on_total(uint64_t total, void *ud)
{
	struct seen *s = ud;

	s->total = total;
	s->totals++;
}

static void on_client(const char *id, uint64_t kicks, void *ud)
{
	struct seen *s = ud;

	snprintf(s->last, sizeof(s->last), "%s", id);
	s->last_kicks = kicks;
	s->clients++;
}

static void test_flush_reports_changes_once(void)
{
	guard *g = guard_new(&B, 8, 2);
	struct seen s;
	int i;

	memset(&s, 0, sizeof(s));
	CHECK(guard_flush_changes(g, on_total, on_client, &s) == 0);
	for(i = 0; i < 20; i++) guard_charge(g, "x", 0, 0);
	guard_charge(g, "x", 0, 0);
	guard_charge(g, "x", 0, 0);
	CHECK(guard_flush_changes(g, on_total, on_client, &s) == 2);
	CHECK(s.total == 2 && s.totals == 1 && s.clients == 1);
	CHECK(!strcmp(s.last, "x") && s.last_kicks == 2);
	CHECK(guard_flush_changes(g, on_total, on_client, &s) == 0);
	CHECK(guard_flush_changes(g, NULL, NULL, NULL) == 0);
	guard_free(g);
}

static void test_bad_arguments(void)
{
	guard *g = guard_new(&B, 8, 2);

	CHECK(guard_charge(NULL, "x", 0, 0) == GUARD_ERROR);
	CHECK(guard_charge(g, NULL, 0, 0) == GUARD_ERROR);
	CHECK(guard_client_kicks(g, NULL) == 0);
	CHECK(guard_total_kicks(NULL) == 0);
	CHECK(guard_charge(g, "", 0, 0) == GUARD_PASS);
	guard_free(g);
}

int main(void)
{
	test_budget_validation();
	test_burst_then_rate();
	test_bytes_budget();
	test_clock_going_backwards_is_harmless();
	test_state_survives_and_table_is_bounded();
	test_kicked_clients_bounded();
	test_flush_reports_changes_once();
	test_bad_arguments();
	printf("guard_core: %d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
