// camlink: firmware version string reported in the status "fw" field.
#pragma once

#ifndef CAMLINK_FW_VERSION
#define CAMLINK_FW_VERSION "1.0.0"
#endif
