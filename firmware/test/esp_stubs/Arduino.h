#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#define HIGH 1
#define LOW 0
#define OUTPUT 0x03
void pinMode(uint8_t pin, uint8_t mode);
void digitalWrite(uint8_t pin, uint8_t val);
unsigned long millis();
void delay(uint32_t ms);
bool psramFound();
struct HardwareSerial { void begin(unsigned long baud); };
extern HardwareSerial Serial;
struct EspClass { uint32_t getFreePsram(); uint32_t getPsramSize(); };
extern EspClass ESP;
int configTime(long gmt_offset_sec, int daylight_offset_sec, const char* server1,
               const char* server2 = nullptr, const char* server3 = nullptr);
#define log_e(fmt, ...) std::printf(fmt "\n", ##__VA_ARGS__)
#define log_w(fmt, ...) std::printf(fmt "\n", ##__VA_ARGS__)
#define log_i(fmt, ...) std::printf(fmt "\n", ##__VA_ARGS__)
