// Small network-configuration rules of the device, portable so they are tested on
// the host: the TLS name to verify when the broker is reached by IP address, the
// empty-SSID compile-time check, and how long one Wi-Fi attempt may take.
#pragma once

#include <cstdint>

namespace camlink {

/// True when host is a dotted IPv4 literal or contains ':' (IPv6 literal).
bool is_ip_literal(const char* host);

/// mbedTLS 2.28 (IDF 4.4) checks the server certificate against DNS names only, so a
/// broker reached by IP address fails verification. The secrets header may name a DNS
/// name that is in the certificate (CAMLINK_BROKER_TLS_NAME): that name is verified
/// instead of the IP address.
struct TlsNamePlan {
  const char* common_name = nullptr;  // name to verify (nullptr: the host itself)
  bool skip_cn_check = false;         // verify the chain (pinned CA) but no name
  const char* error = nullptr;        // configuration that cannot work
};

/// `can_set_common_name`: the MQTT client can verify a name other than the host
/// (esp-mqtt IDF 5: broker.verification.common_name). On IDF 4.4 it cannot: with an
/// IP host and a TLS name, the name check is skipped and only the pinned private CA
/// is verified (documented; prefer a DNS host name there).
TlsNamePlan tls_name_plan(const char* host, const char* tls_name, bool can_set_common_name);

/// A compile-time check: an SSID must not be empty (review defect 9).
constexpr bool ssid_configured(const char* ssid) { return ssid != nullptr && ssid[0] != '\0'; }

/// How long one Wi-Fi connection attempt is given before disconnect + begin again:
/// at least `min_attempt_ms` (association + WPA handshake + DHCP take several seconds;
/// cutting them restarts from scratch), or the backoff delay when longer.
inline uint32_t wifi_attempt_window_ms(uint32_t backoff_ms, uint32_t min_attempt_ms) {
  return backoff_ms > min_attempt_ms ? backoff_ms : min_attempt_ms;
}

}  // namespace camlink
