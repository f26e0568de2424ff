#pragma once
#include "freertos/FreeRTOS.h"
struct tskTaskControlBlock;
typedef struct tskTaskControlBlock* TaskHandle_t;
typedef void (*TaskFunction_t)(void*);
BaseType_t xTaskCreatePinnedToCore(TaskFunction_t fn, const char* name, uint32_t stack_depth,
                                   void* arg, UBaseType_t priority, TaskHandle_t* created,
                                   BaseType_t core_id);
void vTaskDelay(TickType_t ticks);
void vTaskDelete(TaskHandle_t task);
