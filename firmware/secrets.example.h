// Template of a device secrets header. `python -m broker device add <id>` writes
// the real one to firmware/secrets/<id>.h (git-ignored, mode 0600); copy this
// file there by hand only if you provision without that tool.
// Select the device at build time: CAM_DEVICE=<id> pio run -e esp32cam -t upload
#pragma once
#define CAM_DEVICE_ID "cam01"
#define CAM_MQTT_PASSWORD "change-me"
#define CAM_MQTT_HOST "broker.example"   // must be in the broker certificate's names
// #define CAMLINK_BROKER_TLS_NAME "broker.lan"  // when CAM_MQTT_HOST is an IP address:
//                                             // a DNS name in the broker certificate
#define CAM_MQTT_PORT 8883
#define CAM_TOPIC_PREFIX "cam"
#define CAM_WIFI_SSID ""                 // required (static_assert), unless CAMLINK_WIRED_NETWORK
#define CAM_WIFI_PASSWORD ""
static const char CAM_CA_PEM[] = R"PEM(-----BEGIN CERTIFICATE-----
...the camstack CA certificate (data/pki/ca.crt)...
-----END CERTIFICATE-----
)PEM";
