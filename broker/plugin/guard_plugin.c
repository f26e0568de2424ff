/*
 * camstack broker guard: Mosquitto 2.0 plugin (plugin API version 5).
 *
 *  - MOSQ_EVT_MESSAGE: meters every client that is not a service (a token bucket on
 *    messages/s and bytes/s with bursts, guard_core.c). A publish over budget makes
 *    the callback return MOSQ_ERR_ADMINISTRATIVE_ACTION: Mosquitto 2.0.11's
 *    handle__publish() then returns that code before storing the message and before
 *    any PUBACK, and the read loop disconnects the client (do_disconnect). The device
 *    keeps its unacknowledged messages and resends them after reconnecting; nothing
 *    is acknowledged and dropped (MOSQ_ERR_ACL_DENIED would PUBACK-and-drop for
 *    MQTT 3.1.1). The same callback clears the retain flag of publishes on
 *    <prefix>/<id>/frame, so a frame is never stored as retained.
 *  - MOSQ_EVT_ACL_CHECK: denies a `$share/...` subscription to any client that is not a
 *    service account; every other check is deferred to the acl_file.
 *  - MOSQ_EVT_TICK: publishes the kick counts, retained, under $SYS/broker/camstack/guard/.
 *
 * Options (plugin_opt_<name> in mosquitto.conf), all optional:
 *   msgs_per_s, burst_msgs, bytes_per_s, burst_bytes   device budget
 *   service_roles   space separated roles; user "<role>" or "<role>-..." is a service:
 *                   not metered, may subscribe to $share (default: none)
 *   frame_prefix    topic prefix of frame topics (default "cam")
 *   max_clients     bucket table size (default 4096)
 *   max_kicked      clients whose own kick count is published (default 256)
 *   publish_interval_s  at most one $SYS update per this many seconds (default 10)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "guard_core.h"

#define GUARD_SYS_TOPIC "$SYS/broker/camstack/guard"
#define MAX_ROLES 16
#define MAX_ROLE_LEN 64

struct guard_plugin {
	mosquitto_plugin_id_t *pid;
	guard *g;
	guard_budget budget;
	char roles[MAX_ROLES][MAX_ROLE_LEN];
	int nroles;
	char frame_prefix[128];
	size_t max_clients;
	size_t max_kicked;
	int64_t publish_interval_ns;
	int64_t last_publish_ns;
	int published_once;
	uint64_t retain_stripped;
	uint64_t retain_stripped_logged;
	uint64_t share_denied;
	uint64_t core_errors;
};

static struct guard_plugin *plugin_state;

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const char *client_name(struct mosquitto *client)
{
	const char *name = mosquitto_client_username(client);

	if(!name) name = mosquitto_client_id(client);
	return name;
}

static int is_service(const struct guard_plugin *p, const char *name)
{
	int i;
	size_t len;

	if(!name) return 0;
	for(i = 0; i < p->nroles; i++){
		len = strlen(p->roles[i]);
		if(!strncmp(name, p->roles[i], len) && (name[len] == '\0' || name[len] == '-')){
			return 1;
		}
	}
	return 0;
}

/* <prefix>/<one non-empty level>/frame */
static int is_frame_topic(const struct guard_plugin *p, const char *topic)
{
	size_t plen = strlen(p->frame_prefix);
	const char *level, *slash;

	if(!topic || strncmp(topic, p->frame_prefix, plen) || topic[plen] != '/') return 0;
	level = topic + plen + 1;
	slash = strchr(level, '/');
	if(!slash || slash == level) return 0;
	return !strcmp(slash, "/frame");
}

static int cb_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct guard_plugin *p = userdata;
	const char *name;
	int rc;

	(void)event;
	if(ed->retain && is_frame_topic(p, ed->topic)){
		ed->retain = false;
		p->retain_stripped++;
	}
	name = client_name(ed->client);
	if(!name || is_service(p, name)) return MOSQ_ERR_SUCCESS;

	rc = guard_charge(p->g, name, ed->payloadlen, mono_ns());
	if(rc == GUARD_PASS) return MOSQ_ERR_SUCCESS;
	if(rc == GUARD_ERROR){
		/* Out of memory: let the message through rather than kick honest devices. */
		p->core_errors++;
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_log_printf(MOSQ_LOG_WARNING,
			"camstack-guard: client %s over its budget (%.0f msg/s, burst %.0f; %.0f B/s, "
			"burst %.0f): disconnecting it without acknowledging '%s' (kick %" PRIu64
			" for it, %" PRIu64 " in total); it resends after reconnecting.",
			name, p->budget.msgs_per_s, p->budget.burst_msgs, p->budget.bytes_per_s,
			p->budget.burst_bytes, ed->topic ? ed->topic : "",
			guard_client_kicks(p->g, name), guard_total_kicks(p->g));
	return MOSQ_ERR_ADMINISTRATIVE_ACTION;
}

static int cb_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct guard_plugin *p = userdata;
	const char *name;

	(void)event;
	if(ed->access != MOSQ_ACL_SUBSCRIBE || !ed->topic || strncmp(ed->topic, "$share/", 7)){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	name = client_name(ed->client);
	if(name && is_service(p, name)) return MOSQ_ERR_PLUGIN_DEFER;
	p->share_denied++;
	mosquitto_log_printf(MOSQ_LOG_WARNING,
			"camstack-guard: denied shared subscription '%s' to client %s (services only).",
			ed->topic, name ? name : "<unknown>");
	return MOSQ_ERR_ACL_DENIED;
}

static void publish_u64(const char *topic, uint64_t value)
{
	char buf[32];
	int len = snprintf(buf, sizeof(buf), "%" PRIu64, value);

	mosquitto_broker_publish_copy(NULL, topic, len, buf, 0, true, NULL);
}

static void publish_total(uint64_t total, void *ud)
{
	(void)ud;
	publish_u64(GUARD_SYS_TOPIC "/kicks", total);
}

static void publish_client(const char *id, uint64_t kicks, void *ud)
{
	char topic[512];

	(void)ud;
	if(snprintf(topic, sizeof(topic), GUARD_SYS_TOPIC "/kicked/%s", id) < (int)sizeof(topic)){
		publish_u64(topic, kicks);
	}
}

static int cb_tick(int event, void *event_data, void *userdata)
{
	struct guard_plugin *p = userdata;
	int64_t now = mono_ns();

	(void)event;
	(void)event_data;
	if(p->published_once && now - p->last_publish_ns < p->publish_interval_ns) return MOSQ_ERR_SUCCESS;
	p->last_publish_ns = now;
	if(!p->published_once){
		p->published_once = 1;
		publish_total(guard_total_kicks(p->g), NULL);
	}
	guard_flush_changes(p->g, publish_total, publish_client, NULL);
	if(p->retain_stripped != p->retain_stripped_logged){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"camstack-guard: cleared the retain flag of %" PRIu64 " frame publishes so far.",
				p->retain_stripped);
		p->retain_stripped_logged = p->retain_stripped;
	}
	return MOSQ_ERR_SUCCESS;
}

static int parse_double(const char *key, const char *value, double min, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(value, &end);
	if(errno || end == value || *end != '\0' || !(v >= min) || v > 1e15){
		mosquitto_log_printf(MOSQ_LOG_ERR, "camstack-guard: bad plugin_opt_%s '%s'.", key, value);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_roles(struct guard_plugin *p, const char *value)
{
	const char *s = value, *e;
	size_t len;

	p->nroles = 0;
	while(*s){
		while(*s == ' ' || *s == ',') s++;
		if(!*s) break;
		e = s;
		while(*e && *e != ' ' && *e != ',') e++;
		len = (size_t)(e - s);
		if(p->nroles >= MAX_ROLES || len >= MAX_ROLE_LEN){
			mosquitto_log_printf(MOSQ_LOG_ERR, "camstack-guard: bad plugin_opt_service_roles.");
			return -1;
		}
		memcpy(p->roles[p->nroles], s, len);
		p->roles[p->nroles][len] = '\0';
		p->nroles++;
		s = e;
	}
	return 0;
}

static int parse_options(struct guard_plugin *p, struct mosquitto_opt *opts, int n)
{
	int i;
	double v;
	const char *k, *val;

	for(i = 0; i < n; i++){
		k = opts[i].key;
		val = opts[i].value ? opts[i].value : "";
		if(!k) continue;
		if(!strcmp(k, "msgs_per_s")){
			if(parse_double(k, val, 1e-6, &p->budget.msgs_per_s)) return -1;
		}else if(!strcmp(k, "burst_msgs")){
			if(parse_double(k, val, 1, &p->budget.burst_msgs)) return -1;
		}else if(!strcmp(k, "bytes_per_s")){
			if(parse_double(k, val, 1e-6, &p->budget.bytes_per_s)) return -1;
		}else if(!strcmp(k, "burst_bytes")){
			if(parse_double(k, val, 1, &p->budget.burst_bytes)) return -1;
		}else if(!strcmp(k, "service_roles")){
			if(parse_roles(p, val)) return -1;
		}else if(!strcmp(k, "frame_prefix")){
			if(!*val || strlen(val) >= sizeof(p->frame_prefix) || strpbrk(val, "+#")){
				mosquitto_log_printf(MOSQ_LOG_ERR, "camstack-guard: bad plugin_opt_frame_prefix.");
				return -1;
			}
			strcpy(p->frame_prefix, val);
		}else if(!strcmp(k, "max_clients")){
			if(parse_double(k, val, 2, &v) || v > 1e7) return -1;
			p->max_clients = (size_t)v;
		}else if(!strcmp(k, "max_kicked")){
			if(parse_double(k, val, 0, &v) || v > 1e7) return -1;
			p->max_kicked = (size_t)v;
		}else if(!strcmp(k, "publish_interval_s")){
			if(parse_double(k, val, 0, &v) || v > 86400) return -1;
			p->publish_interval_ns = (int64_t)(v * 1e9);
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, "camstack-guard: unknown option plugin_opt_%s.", k);
			return -1;
		}
	}
	if(p->max_kicked >= p->max_clients){
		mosquitto_log_printf(MOSQ_LOG_ERR, "camstack-guard: max_kicked must be below max_clients.");
		return -1;
	}
	return 0;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	struct guard_plugin *p;

	p = calloc(1, sizeof(*p));
	if(!p) return MOSQ_ERR_NOMEM;
	p->pid = identifier;
	/* Defaults: docs/security.md, "Per-device limits". */
	p->budget.msgs_per_s = 300;
	p->budget.burst_msgs = 600;
	p->budget.bytes_per_s = 2.0 * 1024 * 1024;
	p->budget.burst_bytes = 4.0 * 1024 * 1024;
	strcpy(p->frame_prefix, "cam");
	p->max_clients = 4096;
	p->max_kicked = 256;
	p->publish_interval_ns = 10LL * 1000000000LL;
	if(parse_options(p, options, option_count)){
		free(p);
		return MOSQ_ERR_INVAL;
	}
	p->g = guard_new(&p->budget, p->max_clients, p->max_kicked);
	if(!p->g){
		mosquitto_log_printf(MOSQ_LOG_ERR, "camstack-guard: invalid budget or out of memory.");
		free(p);
		return MOSQ_ERR_INVAL;
	}
	if(mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, cb_message, NULL, p)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, cb_acl_check, NULL, p)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_TICK, cb_tick, NULL, p)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "camstack-guard: could not register callbacks.");
		mosquitto_callback_unregister(identifier, MOSQ_EVT_MESSAGE, cb_message, NULL);
		mosquitto_callback_unregister(identifier, MOSQ_EVT_ACL_CHECK, cb_acl_check, NULL);
		mosquitto_callback_unregister(identifier, MOSQ_EVT_TICK, cb_tick, NULL);
		guard_free(p->g);
		free(p);
		return MOSQ_ERR_UNKNOWN;
	}
	plugin_state = p;
	*userdata = p;
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"camstack-guard: devices limited to %.0f msg/s (burst %.0f) and %.0f B/s (burst %.0f);"
			" %d service roles exempt; $share for services only; no retained frames on %s/+/frame.",
			p->budget.msgs_per_s, p->budget.burst_msgs, p->budget.bytes_per_s,
			p->budget.burst_bytes, p->nroles, p->frame_prefix);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct guard_plugin *p = userdata;

	(void)options;
	(void)option_count;
	if(!p) return MOSQ_ERR_SUCCESS;
	mosquitto_callback_unregister(p->pid, MOSQ_EVT_MESSAGE, cb_message, NULL);
	mosquitto_callback_unregister(p->pid, MOSQ_EVT_ACL_CHECK, cb_acl_check, NULL);
	mosquitto_callback_unregister(p->pid, MOSQ_EVT_TICK, cb_tick, NULL);
	guard_free(p->g);
	free(p);
	if(plugin_state == p) plugin_state = NULL;
	return MOSQ_ERR_SUCCESS;
}
