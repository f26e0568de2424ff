#pragma once
#include "freertos/FreeRTOS.h"
struct QueueDefinition;
typedef struct QueueDefinition* QueueHandle_t;
QueueHandle_t xQueueCreate(UBaseType_t length, UBaseType_t item_size);
BaseType_t xQueueSend(QueueHandle_t q, const void* item, TickType_t wait);
BaseType_t xQueueReceive(QueueHandle_t q, void* buffer, TickType_t wait);
