//! The order in which the client offers its TLS cipher suites: ChaCha20-Poly1305 first on a
//! CPU without AES instructions, AES-GCM first (rustls' own order) on one with them.
//!
//! Key idea: servers take the client's preference (BoringSSL, Go's crypto/tls, rustls do), so
//! the client's list decides the cipher. Without AES instructions (every Raspberry Pi before
//! the Pi 5) AES-GCM runs in software, several times slower than ChaCha20-Poly1305; with them
//! AES-GCM is the faster one. The order is chosen once, at start-up, from
//! `server.cipher_order`: `auto` (look at the CPU), `aes` or `chacha`.
//!
//! What counts as "has AES": x86 `aes` and `pclmulqdq`; aarch64 `aes` and `pmull` (std's
//! run-time detection); 32-bit ARM `aes` and `pmull` on the `Features` line of /proc/cpuinfo
//! (std has no stable detection there). Anything else, or an unreadable answer, counts as no
//! AES: ChaCha20 is never a bad choice on such a CPU.

use rustls::{CipherSuite, SupportedCipherSuite};

/// `server.cipher_order`: which suites the client offers first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum CipherOrder {
    /// ChaCha20 first when the CPU lacks AES instructions, else AES-GCM first.
    #[default]
    Auto,
    /// AES-GCM first (rustls' default order).
    Aes,
    /// ChaCha20-Poly1305 first.
    Chacha,
}

impl CipherOrder {
    /// The setting's value in the config file (`auto`, `aes`, `chacha`), if it is one.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Self::Auto),
            "aes" => Some(Self::Aes),
            "chacha" => Some(Self::Chacha),
            _ => None,
        }
    }

    /// The setting's value as written in the config file.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Aes => "aes",
            Self::Chacha => "chacha",
        }
    }

    /// Whether ChaCha20-Poly1305 goes first, on a CPU that has AES instructions or not.
    pub(crate) fn chacha_first(self, cpu_has_aes: bool) -> bool {
        match self {
            Self::Auto => !cpu_has_aes,
            Self::Aes => false,
            Self::Chacha => true,
        }
    }
}

/// True for the ChaCha20-Poly1305 suites (TLS 1.3 and TLS 1.2).
fn is_chacha(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// `suites` with the ChaCha20 ones moved to the front when `chacha_first`; the order among the
/// others (and among the ChaCha20 ones) is kept.
pub(crate) fn ordered(
    suites: &[SupportedCipherSuite],
    chacha_first: bool,
) -> Vec<SupportedCipherSuite> {
    let mut out = suites.to_vec();
    if chacha_first {
        out.sort_by_key(|s| !is_chacha(s.suite()));
    }
    out
}

/// Whether this CPU has the instructions that make AES-GCM fast (AES and carry-less multiply).
pub(crate) fn cpu_has_aes() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(target_arch = "arm")]
    {
        // Under qemu-user this is the host's file (an x86 host has no `Features` line): the
        // emulated CPU counts as without AES whatever `-cpu` says.
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|text| cpuinfo_has_aes(&text))
    }
    #[cfg(not(any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "arm"
    )))]
    {
        false
    }
}

/// Whether a Linux /proc/cpuinfo text lists `aes` and `pmull` on a `Features` line (32-bit
/// ARM kernels write one per core, or one for all; each must have them).
#[cfg_attr(not(any(target_arch = "arm", test)), allow(dead_code))]
pub(crate) fn cpuinfo_has_aes(text: &str) -> bool {
    let mut lines = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "Features")
        .peekable();
    lines.peek().is_some()
        && lines.all(|(_, v)| {
            let flags: Vec<&str> = v.split_whitespace().collect();
            flags.contains(&"aes") && flags.contains(&"pmull")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_follows_the_setting_and_the_cpu() {
        for (order, has_aes, chacha) in [
            (CipherOrder::Auto, false, true),
            (CipherOrder::Auto, true, false),
            (CipherOrder::Aes, false, false),
            (CipherOrder::Aes, true, false),
            (CipherOrder::Chacha, false, true),
            (CipherOrder::Chacha, true, true),
        ] {
            assert_eq!(
                order.chacha_first(has_aes),
                chacha,
                "{order:?}, aes {has_aes}"
            );
        }
    }

    #[test]
    fn the_setting_has_three_values() {
        assert_eq!(CipherOrder::parse("auto"), Some(CipherOrder::Auto));
        assert_eq!(CipherOrder::parse("aes"), Some(CipherOrder::Aes));
        assert_eq!(CipherOrder::parse("chacha"), Some(CipherOrder::Chacha));
        assert_eq!(CipherOrder::parse("ChaCha20"), None);
        for o in [CipherOrder::Auto, CipherOrder::Aes, CipherOrder::Chacha] {
            assert_eq!(CipherOrder::parse(o.name()), Some(o));
        }
        assert_eq!(CipherOrder::default(), CipherOrder::Auto);
    }

    fn names(suites: &[SupportedCipherSuite]) -> Vec<String> {
        suites.iter().map(|s| format!("{:?}", s.suite())).collect()
    }

    #[test]
    fn chacha_first_moves_the_chacha_suites_of_both_versions_to_the_front() {
        let ring = rustls::crypto::ring::default_provider().cipher_suites;
        let chacha = ordered(&ring, true);
        assert_eq!(
            names(&chacha)[..3],
            [
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            ]
        );
        // Nothing lost, nothing added, the AES suites in rustls' order.
        assert_eq!(chacha.len(), ring.len());
        let aes_in = |v: &[SupportedCipherSuite]| -> Vec<String> {
            names(v)
                .into_iter()
                .filter(|n| !n.contains("CHACHA"))
                .collect()
        };
        assert_eq!(aes_in(&chacha), aes_in(&ring));
        assert!(!aes_in(&ring).is_empty());
    }

    #[test]
    fn aes_first_is_rustls_own_order_which_starts_with_aes_gcm() {
        let ring = rustls::crypto::ring::default_provider().cipher_suites;
        let aes = ordered(&ring, false);
        assert_eq!(names(&aes), names(&ring));
        assert!(names(&aes)[0].contains("AES"), "{:?}", names(&aes));
    }

    #[test]
    fn cpuinfo_features_decide_on_32_bit_arm() {
        // A Cortex-A7 (Pi 2) and an ARM1176 (Pi Zero/1): no AES.
        let a7 = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm\n\nprocessor\t: 1\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm\n";
        let arm1176 =
            "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\nFeatures\t: half thumb fastmult vfp edsp java tls\n";
        // An ARMv8 core with the crypto extension, running a 32-bit kernel.
        let a72_crypto = "processor\t: 0\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm aes pmull sha1 sha2 crc32\n";
        assert!(!cpuinfo_has_aes(a7));
        assert!(!cpuinfo_has_aes(arm1176));
        assert!(cpuinfo_has_aes(a72_crypto));
        // `aes` without `pmull` (GHASH in software) is not enough; neither is a word that
        // merely contains "aes".
        assert!(!cpuinfo_has_aes("Features\t: neon aes\n"));
        assert!(!cpuinfo_has_aes("Features\t: neon aes256 pmull\n"));
        // An x86 host's file (what qemu-user shows an emulated ARM program): no Features line.
        assert!(!cpuinfo_has_aes(
            "processor\t: 0\nflags\t\t: fpu sse2 aes pclmulqdq avx2\n"
        ));
        assert!(!cpuinfo_has_aes(""));
        // One core without: not all of them have it.
        assert!(!cpuinfo_has_aes(&format!("{a72_crypto}\n{a7}")));
    }
}
