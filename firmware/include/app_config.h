// Build-time defaults of the ESP32 firmware. Each can be overridden with
// -D<NAME>=<value> in platformio.ini build_flags. Camera settings can also be
// changed at run time with a "set" command on cam/<id>/cmd.
#pragma once

#ifndef CAM_DEFAULT_FRAME_SIZE
#define CAM_DEFAULT_FRAME_SIZE camlink::FrameSize::kSVGA
#endif
#ifndef CAM_DEFAULT_JPEG_QUALITY
#define CAM_DEFAULT_JPEG_QUALITY 12
#endif
#ifndef CAM_DEFAULT_INTERVAL_MS
#define CAM_DEFAULT_INTERVAL_MS 1000
#endif
// Chunk data bytes per MQTT message (contract default 8 KiB).
#ifndef CAM_CHUNK_DATA
#define CAM_CHUNK_DATA 8192
#endif
// Chunk publishes awaiting PUBACK at once.
#ifndef CAM_PUBLISH_WINDOW
#define CAM_PUBLISH_WINDOW 4
#endif
// No PUBACK for this long while connected: resend from the first unacked chunk.
// Shorter than esp-mqtt's outbox expiry (30 s) is not needed: expired items are resent by us.
#ifndef CAM_ACK_TIMEOUT_MS
#define CAM_ACK_TIMEOUT_MS 20000
#endif
// Offline queue in PSRAM: at most this many bytes (also capped at half the free
// PSRAM at boot) and this many frames.
#ifndef CAM_QUEUE_BYTES
#define CAM_QUEUE_BYTES (2u * 1024u * 1024u)
#endif
#ifndef CAM_QUEUE_FRAMES
#define CAM_QUEUE_FRAMES 64
#endif
#ifndef CAM_STATUS_PERIOD_MS
#define CAM_STATUS_PERIOD_MS 60000
#endif
#ifndef CAM_WATCHDOG_S
#define CAM_WATCHDOG_S 30
#endif
#ifndef CAM_NTP_SERVER
#define CAM_NTP_SERVER "pool.ntp.org"
#endif
#ifndef CAM_MQTT_KEEPALIVE_S
#define CAM_MQTT_KEEPALIVE_S 30
#endif
// Reconnect backoff (equal jitter), Wi-Fi and MQTT.
#ifndef CAM_WIFI_BACKOFF_BASE_MS
#define CAM_WIFI_BACKOFF_BASE_MS 4000
#endif
#ifndef CAM_WIFI_BACKOFF_MAX_MS
#define CAM_WIFI_BACKOFF_MAX_MS 60000
#endif
#ifndef CAM_MQTT_BACKOFF_BASE_MS
#define CAM_MQTT_BACKOFF_BASE_MS 1000
#endif
#ifndef CAM_MQTT_BACKOFF_MAX_MS
#define CAM_MQTT_BACKOFF_MAX_MS 60000
#endif
// Frames thrown away after camera init / a frame size change (auto exposure settles).
#ifndef CAM_DISCARD_FRAMES
#define CAM_DISCARD_FRAMES 3
#endif
// Consecutive capture failures before the camera is power-cycled and re-initialised.
#ifndef CAM_MAX_CAPTURE_FAILURES
#define CAM_MAX_CAPTURE_FAILURES 20
#endif
// Resend a frame whole when it is not fully acknowledged this long after its first
// chunk went out: under the ingestor's partial_timeout_s (60 s) with 10 s margin.
#ifndef CAM_PARTIAL_TIMEOUT_MS
#define CAM_PARTIAL_TIMEOUT_MS 50000
#endif
// esp-mqtt's own retransmission of unacknowledged messages; long, so the core's ack
// timeout governs resends (esp-mqtt's default of 1 s doubled every resend).
#ifndef CAM_MQTT_RETRANSMIT_MS
#define CAM_MQTT_RETRANSMIT_MS 60000
#endif
// One Wi-Fi attempt (association, WPA, DHCP) gets at least this long.
#ifndef CAM_WIFI_ATTEMPT_MS
#define CAM_WIFI_ATTEMPT_MS 15000
#endif
// Camera power-cycle + re-inits (each after CAM_MAX_CAPTURE_FAILURES failures in a
// row) before the device reboots.
#ifndef CAM_MAX_CAMERA_REINITS
#define CAM_MAX_CAMERA_REINITS 3
#endif
// A new OTA image must reach the broker within this time or it is rolled back.
#ifndef CAM_OTA_CONFIRM_MS
#define CAM_OTA_CONFIRM_MS 300000
#endif
// Deep-sleep timelapse: 0 = off (always on). Otherwise wake every CAM_DEEP_SLEEP_S,
// capture CAM_SLEEP_FRAMES, send, sleep; give up sending after CAM_SLEEP_AWAKE_MAX_MS.
#ifndef CAM_DEEP_SLEEP_S
#define CAM_DEEP_SLEEP_S 0
#endif
#ifndef CAM_SLEEP_FRAMES
#define CAM_SLEEP_FRAMES 1
#endif
#ifndef CAM_SLEEP_AWAKE_MAX_MS
#define CAM_SLEEP_AWAKE_MAX_MS 60000
#endif
