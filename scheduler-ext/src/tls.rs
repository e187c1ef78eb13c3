//! The extender's serving certificate (and, optionally, the CA its clients'
//! certificates must chain to), for kube-scheduler's `enableHTTPS` /
//! `tlsConfig`: `sextant_kit::tls`, shared with the webhook.

pub use sextant_kit::tls::{ServingCert, TlsError, load_pair, server_config};

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::fixtures::TestPki;

    fn leaf(cert: &ServingCert) -> Vec<u8> {
        cert.current().cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_rewritten_pair_is_served_after_reload_and_a_broken_one_keeps_the_old() {
        let first = TestPki::new();
        let cert = ServingCert::load(&first.cert, &first.key).unwrap();
        let served = leaf(&cert);
        assert!(!cert.reload_if_changed().unwrap(), "nothing changed yet");

        // A rotated pair, swapped in as kubelet swaps a Secret's files.
        let second = TestPki::new();
        for (from, to) in [(&second.cert, &first.cert), (&second.key, &first.key)] {
            let tmp = to.with_extension("new");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
        assert!(cert.reload_if_changed().unwrap());
        let rotated = leaf(&cert);
        assert_ne!(rotated, served, "the new certificate is served");

        // A half-written key: reported, the rotated pair stays.
        std::fs::write(&first.key, "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
        let err = cert.reload_if_changed().unwrap_err();
        assert!(
            sextant_kit::ErrorChain(&err)
                .to_string()
                .contains("tls.key"),
            "{}",
            sextant_kit::ErrorChain(&err)
        );
        assert_eq!(leaf(&cert), rotated);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused_at_load() {
        let a = TestPki::new();
        let b = TestPki::new();
        let err = ServingCert::load(&a.cert, &b.key).unwrap_err();
        assert_eq!(err.metric_label(), "tls_pair");
    }
}
