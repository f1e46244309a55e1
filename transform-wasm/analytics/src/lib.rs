//! A second transform: the same validation as the reference, a different
//! PII policy, for an analytics copy of the logins that nobody can
//! re-identify, not even the key holder. It writes its own table,
//! `user_logins_analytics` (the same columns as `user_logins`, see
//! [`login_core::user_logins_columns`]), so it can run beside the reference
//! without mixing reversible and irreversible values in one column:
//!
//! * `masked_ip` holds the network in clear: the /24 of an IPv4 address, the
//!   /48 of an IPv6 address (enough for geo analysis, not for a person);
//! * `masked_device_id` holds a keyed, irreversible pseudonym
//!   (`ps1.<key id>.…`): equal devices still count and join as equal.

use std::net::IpAddr;

use login_core::{Protect, Protected};
use maskpipe_guest::{Declaration, Rejection, Rows, Table, Transform};

/// The table rows go to: the only one, index 0.
pub const USER_LOGINS_ANALYTICS: u8 = 0;

/// The analytics transform: `user_logins_analytics`, with the [`Analytics`]
/// policy.
pub struct AnalyticsTransform;

impl Transform for AnalyticsTransform {
    const VALUES_PER_MESSAGE: usize = 7;

    fn describe() -> Declaration {
        Declaration::new(
            vec![Table::new(
                "user_logins_analytics",
                login_core::user_logins_columns(),
            )],
            login_core::REASON_CODES,
        )
    }

    fn transform(body: &str, sent_timestamp_ms: u64, rows: &mut Rows) -> Result<(), Rejection> {
        let login = login_core::transform(body, sent_timestamp_ms, &Analytics)?;
        login_core::push_user_login(rows, USER_LOGINS_ANALYTICS, &login);
        Ok(())
    }
}

maskpipe_guest::export_transform!(AnalyticsTransform);

/// The analytics policy: the network in clear, the device pseudonymized.
pub struct Analytics;

impl Protect for Analytics {
    fn ip(&self, ip: IpAddr, _written: &str) -> Protected {
        Protected::Clear(network(ip))
    }
    fn device_id(&self, device_id: &str) -> Protected {
        Protected::Pseudonymized(device_id.to_owned())
    }
}

/// The /24 (IPv4) or /48 (IPv6) network of an address, in CIDR notation.
pub fn network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            format!("{prefix}/48")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_keep_only_the_prefix() {
        assert_eq!(
            network("199.172.111.135".parse().unwrap()),
            "199.172.111.0/24"
        );
        assert_eq!(
            network("2001:db8:1234:5678::1".parse().unwrap()),
            "2001:db8:1234::/48"
        );
    }
}
