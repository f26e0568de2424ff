// Secrets header of the host syntax check (make esp-syntax): an IP broker host with
// a TLS name, as a provisioned device reached by address would have.
#pragma once
#define CAM_DEVICE_ID "cam01"
#define CAM_MQTT_PASSWORD "test"
#define CAM_MQTT_HOST "192.168.1.10"
#define CAMLINK_BROKER_TLS_NAME "broker.lan"
#define CAM_MQTT_PORT 8883
#define CAM_TOPIC_PREFIX "cam"
#define CAM_WIFI_SSID "test-net"
#define CAM_WIFI_PASSWORD "test-pass"
static const char CAM_CA_PEM[] = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
