//! Fuzz target: the text parsers for operator input (exit policies, specs,
//! peers files).
//!
//! The first byte picks the parser, the rest is the text (lossy UTF-8).
//! Inputs containing `@` are skipped for specs and peers files: a valid
//! node id before `@` makes relay-link resolve the host name after it,
//! which would have the fuzzer querying DNS. Checks: no panic; a parsed
//! policy or spec prints to text that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayd::exit_policy::ExitPolicy;
use relayd::peers::Peers;
use relayd::spec::Spec;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 3 {
        0 => {
            if let Ok(p) = ExitPolicy::parse_rules(&[text.as_ref()]) {
                let again = ExitPolicy::parse_rules(&[p.to_string()]).unwrap();
                assert_eq!(again, p);
            }
        }
        1 if !text.contains('@') => {
            if let Ok(s) = Spec::parse(&text) {
                assert_eq!(Spec::parse(&s.to_string()).unwrap(), s);
            }
        }
        2 if !text.contains('@') => {
            if let Ok(p) = Peers::parse(&text) {
                assert!(p.is_empty(), "a peer without an address");
            }
        }
        _ => {}
    }
});
