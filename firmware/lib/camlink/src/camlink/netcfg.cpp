#include "camlink/netcfg.h"

namespace camlink {

bool is_ip_literal(const char* host) {
  if (host == nullptr || host[0] == '\0') return false;
  for (const char* p = host; *p != '\0'; ++p)
    if (*p == ':') return true;  // IPv6 (a host name never has one)
  int dots = 0, digits = 0;
  long part = 0;
  for (const char* p = host; *p != '\0'; ++p) {
    if (*p == '.') {
      if (digits == 0) return false;
      ++dots;
      digits = 0;
      part = 0;
    } else if (*p >= '0' && *p <= '9') {
      part = part * 10 + (*p - '0');
      if (++digits > 3 || part > 255) return false;
    } else {
      return false;
    }
  }
  return dots == 3 && digits > 0;
}

TlsNamePlan tls_name_plan(const char* host, const char* tls_name, bool can_set_common_name) {
  TlsNamePlan p;
  bool has_name = tls_name != nullptr && tls_name[0] != '\0';
  if (has_name && is_ip_literal(tls_name)) {
    p.error = "CAMLINK_BROKER_TLS_NAME must be a DNS name from the broker certificate";
    return p;
  }
  if (!is_ip_literal(host)) {
    // A DNS host is verified as is; an explicit different name is honoured if possible.
    if (has_name && can_set_common_name) p.common_name = tls_name;
    return p;
  }
  if (!has_name) {
    p.error = "broker host is an IP address: set CAMLINK_BROKER_TLS_NAME to a DNS name "
              "in the broker certificate";
    return p;
  }
  if (can_set_common_name) {
    p.common_name = tls_name;
  } else {
    p.skip_cn_check = true;
  }
  return p;
}

}  // namespace camlink
