//! How the PII fields of a valid login are protected: the one thing the
//! login transforms differ in.

use std::net::IpAddr;

use crate::Protected;

/// A transform's PII policy: how each PII field of a valid message is to be
/// protected.
pub trait Protect {
    /// The value for `masked_ip`; `written` is the address as the message
    /// wrote it (see [`canonical_ip`]).
    fn ip(&self, ip: IpAddr, written: &str) -> Protected;
    /// The value for `masked_device_id`.
    fn device_id(&self, device_id: &str) -> Protected;
}

/// The reference policy: reversible masking of both fields. The ip is masked
/// in canonical form, so equal addresses mask equally however they were
/// written ("::1" and "0::1").
pub struct MaskBoth;

impl Protect for MaskBoth {
    fn ip(&self, ip: IpAddr, written: &str) -> Protected {
        Protected::Masked(canonical_ip(ip, written))
    }
    fn device_id(&self, device_id: &str) -> Protected {
        Protected::Masked(device_id.to_owned())
    }
}

/// `ip` in canonical form. An IPv4 address that parsed is canonical already
/// (the parser refuses leading zeros and short forms), so `written` is
/// reused without formatting; IPv6 is formatted (lower case, `::` folding).
pub fn canonical_ip(ip: IpAddr, written: &str) -> String {
    match ip {
        IpAddr::V4(_) => written.to_owned(),
        IpAddr::V6(_) => ip.to_string(),
    }
}
