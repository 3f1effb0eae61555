//! Register names: what a name may contain, and the one spelling the store
//! keys it by.
//!
//! Names are keys that people read (in `GetRegister` answers, logs, metrics
//! and URLs), so two rules hold for every backend and both fronts:
//! - **One spelling per name.** A name is stored in Unicode Normalization
//!   Form C: `"café"` typed with a precomposed `é` (U+00E9) and with `e` +
//!   a combining acute accent (U+0065 U+0301) look the same and are the same
//!   register. [`register_name`] normalises what a caller sends;
//!   [`validate_register_name`] refuses a name that is not in NFC, so a
//!   backend reached without the service (tests, the simulation) cannot
//!   store a second spelling either.
//! - **Nothing invisible.** A name that displays differently from what it
//!   is — a right-to-left override (U+202E) that reverses what follows, a
//!   zero-width space (U+200B), a byte-order mark (U+FEFF) — lets one
//!   register pass for another in a log or a dashboard. Refused: control
//!   (Cc) and format (Cf) characters, line and paragraph separators (Zl,
//!   Zp), spaces other than U+0020 (Zs), private-use (Co) and unassigned
//!   (Cn) code points, and the few letters that render as nothing (the
//!   Hangul fillers, the braille blank).
//!
//! The length limit applies to the normalised name, in bytes.

use std::{borrow::Cow, fmt};

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::CalcError;

/// Longest register name accepted, in bytes (after normalisation). A limit
/// on everything: names are keys of a map the server keeps in memory.
pub const REGISTER_NAME_BYTES_MAX: usize = 64;

/// Letters (Lo) that render as nothing at all: the Hangul fillers and the
/// braille blank. Not a category, so listed.
const BLANK_LETTERS: [char; 5] = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}'];

/// Longest name accepted *as sent*, in bytes: four times the limit. No
/// normalisation shrinks text that much (the most NFC composes is about
/// 3.5 bytes into 1: a Greek iota written as U+1FBE, 3 bytes, with two
/// accents, 2 each, into U+0390, 2 bytes; Hangul jamo compose 3:1), so a
/// longer name is refused on its length before any per-character work — a
/// name is as long as the message allows (16 KiB) until it is checked.
const RAW_NAME_BYTES_MAX: usize = 4 * REGISTER_NAME_BYTES_MAX;

/// Why a character may not appear in a register name (`None`: it may).
pub fn forbidden(ch: char) -> Option<&'static str> {
    // Most names are ASCII: the only forbidden ASCII characters are the
    // controls (Cc), and the category lookup is a table search per char.
    if ch.is_ascii() {
        return ch.is_ascii_control().then_some(CONTROL);
    }
    forbidden_by_category(ch)
}

const CONTROL: &str = "a control character (Cc)";

/// [`forbidden`] without its ASCII shortcut.
fn forbidden_by_category(ch: char) -> Option<&'static str> {
    if ch == ' ' {
        return None;
    }
    if BLANK_LETTERS.contains(&ch) {
        return Some("a letter that renders as blank");
    }
    Some(match ch.general_category() {
        GeneralCategory::Control => CONTROL,
        GeneralCategory::Format => "an invisible format character (Cf)",
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            "a line or paragraph separator (Zl/Zp)"
        }
        GeneralCategory::SpaceSeparator => "a space other than U+0020 (Zs)",
        GeneralCategory::PrivateUse => "a private-use character (Co)",
        GeneralCategory::Unassigned => "an unassigned code point (Cn)",
        GeneralCategory::Surrogate => "a surrogate (Cs)",
        _ => return None,
    })
}

/// A character as `U+202E`, for error messages (never the character
/// itself: it is the invisible one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodePoint(pub char);

impl fmt::Display for CodePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "U+{:04X}", u32::from(self.0))
    }
}

/// Checks a register name as the store keys it: 1..=64 bytes, in NFC,
/// nothing invisible (see the module documentation).
///
/// ```
/// use abacus::core::validate_register_name;
/// assert!(validate_register_name("café").is_ok());
/// assert!(validate_register_name("cafe\u{301}").is_err()); // not NFC
/// assert!(validate_register_name("a\u{202E}b").is_err());
/// ```
pub fn validate_register_name(name: &str) -> Result<(), CalcError> {
    check_length(name)?;
    check_characters(name)?;
    if !is_nfc(name) {
        return Err(CalcError::RegisterNameNotNormalized);
    }
    Ok(())
}

/// 1..=[`REGISTER_NAME_BYTES_MAX`] bytes.
fn check_length(name: &str) -> Result<(), CalcError> {
    if name.is_empty() {
        return Err(CalcError::EmptyRegisterName);
    }
    if name.len() > REGISTER_NAME_BYTES_MAX {
        return Err(CalcError::RegisterNameTooLong { len: name.len() });
    }
    Ok(())
}

/// Nothing [`forbidden`]; the first offender named by its position.
fn check_characters(name: &str) -> Result<(), CalcError> {
    match (1..)
        .zip(name.chars())
        .find(|&(_, c)| forbidden(c).is_some())
    {
        Some((position, ch)) => Err(CalcError::RegisterNameForbiddenChar { ch, position }),
        None => Ok(()),
    }
}

fn is_nfc(name: &str) -> bool {
    match is_nfc_quick(name.chars()) {
        IsNormalized::Yes => true,
        IsNormalized::No => false,
        IsNormalized::Maybe => name.chars().eq(name.nfc()),
    }
}

/// The name a caller sent, as the store keys it: normalised to NFC, then
/// checked ([`validate_register_name`]). Borrowed when it already is (every
/// ASCII name).
///
/// ```
/// use abacus::core::register_name;
/// assert_eq!(register_name("cafe\u{301}").unwrap(), "caf\u{e9}");
/// assert!(register_name("a\u{200B}b").is_err());
/// ```
pub fn register_name(raw: &str) -> Result<Cow<'_, str>, CalcError> {
    if raw.len() > RAW_NAME_BYTES_MAX {
        return Err(CalcError::RegisterNameTooLong { len: raw.len() });
    }
    // Refuse what is forbidden before normalising, so the position named
    // is the one the caller sent.
    check_characters(raw)?;
    if is_nfc(raw) {
        // Characters and form already checked: only the length is left.
        check_length(raw)?;
        return Ok(Cow::Borrowed(raw));
    }
    let name: String = raw.nfc().collect();
    validate_register_name(&name)?;
    Ok(Cow::Owned(name))
}

/// A register name escaped for a log or trace line: printable text as is,
/// anything else as `\u{…}` (Rust's `escape_debug`), without quotes, so an
/// ordinary name prints unchanged. Names are validated before they are
/// stored, so this is the second line of defence, for every line that
/// prints a name.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c == ' ' || forbidden(c).is_none() && !c.is_control() {
                fmt::Write::write_char(f, c)?;
            } else {
                write!(f, "{}", c.escape_unicode())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CalcError as E;

    #[test]
    fn composed_and_decomposed_spellings_are_one_name() {
        let composed = "caf\u{e9}";
        let decomposed = "cafe\u{301}";
        assert_ne!(composed, decomposed);
        assert_eq!(register_name(composed).unwrap(), composed);
        assert_eq!(register_name(decomposed).unwrap(), composed);
        assert!(matches!(register_name("plain"), Ok(Cow::Borrowed("plain"))));
        // Hangul: a syllable and its jamo.
        assert_eq!(
            register_name("\u{1100}\u{1161}").unwrap(),
            "\u{ac00}",
            "jamo compose to the syllable"
        );
        // The ledger-side check refuses the second spelling outright.
        assert_eq!(
            validate_register_name(decomposed),
            Err(E::RegisterNameNotNormalized)
        );
    }

    #[test]
    fn invisible_and_control_characters_are_refused_with_their_code_point() {
        for (name, ch, position) in [
            ("a\u{202E}b", '\u{202E}', 2),
            ("\u{200B}x", '\u{200B}', 1),
            ("\u{FEFF}bom", '\u{FEFF}', 1),
            ("a\nb", '\n', 2),
            ("tab\t", '\t', 4),
            ("a\u{2028}b", '\u{2028}', 2),
            ("nb\u{a0}sp", '\u{a0}', 3),
            ("x\u{e000}", '\u{e000}', 2),
            ("x\u{3164}", '\u{3164}', 2),
            ("x\u{0378}", '\u{0378}', 2),
            ("\u{2066}iso", '\u{2066}', 1),
            ("soft\u{ad}hyphen", '\u{ad}', 5),
        ] {
            let err = register_name(name).unwrap_err();
            assert_eq!(
                err,
                E::RegisterNameForbiddenChar { ch, position },
                "{name:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&CodePoint(ch).to_string()) && !text.contains(ch),
                "names the code point, never prints it: {text}"
            );
            assert_eq!(validate_register_name(name), Err(err));
        }
        for ok in [
            "a b",
            "r-1",
            "caf\u{e9}",
            "\u{65e5}\u{672c}",
            "\u{1F600}",
            "x\u{301}y",
        ] {
            let normal = register_name(ok).unwrap();
            assert!(validate_register_name(&normal).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn length_is_counted_after_normalisation() {
        let max = "x".repeat(REGISTER_NAME_BYTES_MAX);
        assert!(register_name(&max).is_ok());
        // 32 decomposed é (3 bytes each: 96) compose to 64 bytes: allowed.
        let decomposed = "e\u{301}".repeat(32);
        assert_eq!(register_name(&decomposed).unwrap().len(), 64);
        assert_eq!(
            register_name(&"é".repeat(33)),
            Err(E::RegisterNameTooLong { len: 66 })
        );
        assert_eq!(register_name(""), Err(E::EmptyRegisterName));
    }

    #[test]
    fn the_ascii_shortcut_agrees_with_the_categories() {
        for ch in (0..=0x7f_u8).map(char::from) {
            assert_eq!(forbidden(ch), forbidden_by_category(ch), "{ch:?}");
        }
    }

    #[test]
    fn a_name_sent_far_over_the_limit_is_refused_on_its_length() {
        let long = format!("{}\n", "x".repeat(RAW_NAME_BYTES_MAX));
        assert_eq!(
            register_name(&long),
            Err(E::RegisterNameTooLong {
                len: RAW_NAME_BYTES_MAX + 1
            })
        );
        // The densest composition known fits the raw bound with room:
        // 21 iotas with two accents, 7 bytes each sent, 2 bytes stored.
        let dense = "\u{1FBE}\u{308}\u{301}".repeat(21);
        assert_eq!(dense.len(), 147);
        assert_eq!(register_name(&dense).unwrap(), "\u{390}".repeat(21));
        let hangul = "\u{1100}\u{1161}\u{11A8}".repeat(21);
        assert_eq!(register_name(&hangul).unwrap(), "\u{AC01}".repeat(21));
    }

    #[test]
    fn escaped_names_print_ordinary_text_unchanged() {
        assert_eq!(Escaped("total 1").to_string(), "total 1");
        assert_eq!(Escaped("caf\u{e9}").to_string(), "caf\u{e9}");
        assert_eq!(Escaped("a\u{202E}b\n").to_string(), "a\\u{202e}b\\u{a}");
        assert_eq!(Escaped("\u{200B}").to_string(), "\\u{200b}");
    }
}
