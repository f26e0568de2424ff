#pragma once
struct timeval;
typedef void (*sntp_sync_time_cb_t)(struct timeval* tv);
void sntp_set_time_sync_notification_cb(sntp_sync_time_cb_t callback);
typedef enum { SNTP_SYNC_STATUS_RESET, SNTP_SYNC_STATUS_COMPLETED, SNTP_SYNC_STATUS_IN_PROGRESS } sntp_sync_status_t;
sntp_sync_status_t sntp_get_sync_status(void);
