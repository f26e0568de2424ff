#pragma once
#include <cstdint>
typedef int BaseType_t;
typedef uint32_t UBaseType_t;
typedef uint32_t TickType_t;
#define pdTRUE 1
#define pdFALSE 0
