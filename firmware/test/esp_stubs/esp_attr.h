#pragma once
#define RTC_DATA_ATTR __attribute__((section(".rtc.data.stub")))
#define RTC_NOINIT_ATTR __attribute__((section(".rtc_noinit.stub")))
