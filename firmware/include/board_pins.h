// AI-Thinker ESP32-CAM (OV2640) pin map. See docs/firmware.md for the wiring.
#pragma once

#define CAM_PIN_PWDN 32
#define CAM_PIN_RESET -1  // not connected; software reset via SCCB
#define CAM_PIN_XCLK 0
#define CAM_PIN_SIOD 26   // SCCB SDA
#define CAM_PIN_SIOC 27   // SCCB SCL
#define CAM_PIN_D7 35     // Y9
#define CAM_PIN_D6 34     // Y8
#define CAM_PIN_D5 39     // Y7
#define CAM_PIN_D4 36     // Y6
#define CAM_PIN_D3 21     // Y5
#define CAM_PIN_D2 19     // Y4
#define CAM_PIN_D1 18     // Y3
#define CAM_PIN_D0 5      // Y2
#define CAM_PIN_VSYNC 25
#define CAM_PIN_HREF 23
#define CAM_PIN_PCLK 22

#define CAM_PIN_FLASH_LED 4   // the bright white LED (not used: shares the SD card bus)
#define CAM_PIN_STATUS_LED 33 // small red LED, active low
