// The device's secrets header, chosen at build time (never committed):
//   CAM_DEVICE=cam01 pio run -e esp32cam    -> firmware/secrets/cam01.h
// firmware/scripts/select_device.py defines CAM_SECRETS_FILE with its absolute
// path. Without it, a git-ignored firmware/include/secrets.h is used if present.
// Template: firmware/secrets.example.h. Written by `python -m broker device add`.
#pragma once

#if defined(CAM_SECRETS_FILE)
#include CAM_SECRETS_FILE
#elif defined(__has_include)
#if __has_include("secrets.h")
#include "secrets.h"
#else
#error "No device secrets: build with CAM_DEVICE=<id> pio run -e esp32cam (docs/firmware.md)"
#endif
#else
#error "No device secrets: build with CAM_DEVICE=<id> pio run -e esp32cam (docs/firmware.md)"
#endif

#if !defined(CAM_DEVICE_ID) || !defined(CAM_MQTT_PASSWORD) || !defined(CAM_MQTT_HOST) || \
    !defined(CAM_MQTT_PORT) || !defined(CAM_TOPIC_PREFIX) || !defined(CAM_WIFI_SSID) ||   \
    !defined(CAM_WIFI_PASSWORD)
#error "secrets header is missing a macro: see firmware/secrets.example.h"
#endif

#ifndef CAMLINK_BROKER_TLS_NAME
#define CAMLINK_BROKER_TLS_NAME ""  // needed when CAM_MQTT_HOST is an IP address
#endif

// Review defect 9: an empty SSID compiled and then failed forever at run time.
// CAMLINK_WIRED_NETWORK: the board reaches the network some other way (Ethernet).
#include "camlink/netcfg.h"
#ifndef CAMLINK_WIRED_NETWORK
static_assert(camlink::ssid_configured(CAM_WIFI_SSID),
              "CAM_WIFI_SSID is empty: provision with --wifi-ssid (or define "
              "CAMLINK_WIRED_NETWORK for a board without Wi-Fi)");
#endif
