//! DASH SegmentTemplate identifiers (ISO/IEC 23009-1 5.3.9.4.4): `$RepresentationID$`,
//! `$Number$`, `$Time$`, `$Bandwidth$`, `$SubNumber$`, `$$`, with `%0<width>d` format tags on
//! the numeric ones.

/// Values substituted into one template.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vars<'a> {
    pub representation_id: &'a str,
    pub bandwidth: Option<u64>,
    pub number: Option<u64>,
    pub time: Option<u64>,
}

/// Why a template cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unterminated $ identifier")]
    Unterminated,
    #[error("unknown identifier ${0}$")]
    Unknown(String),
    #[error("${0}$ has no value here")]
    Missing(&'static str),
    #[error("bad format tag {0:?}")]
    BadFormat(String),
}

/// Widest zero padding accepted (a crafted `%0999999999d` must not allocate gigabytes).
const MAX_WIDTH: usize = 32;

/// Expands `template` with `vars`.
pub fn expand(template: &str, vars: &Vars<'_>) -> Result<String, TemplateError> {
    Ok(expand_within(template, vars, usize::MAX)?
        .expect("an expansion without a bound always fits"))
}

/// Expands `template` with `vars`, unless the result would be longer than `max` bytes: `None`
/// then, found having read at most about `max` bytes of literal text. A live MPD is expanded
/// once per segment and per copy: a `SegmentTemplate@media` of megabytes was copied whole
/// (and scanned for its next `$`) for each of them, where the result is only skipped.
pub fn expand_within(
    template: &str,
    vars: &Vars<'_>,
    max: usize,
) -> Result<Option<String>, TemplateError> {
    let mut out = String::with_capacity(template.len().min(max).saturating_add(16));
    let mut rest = template;
    // `out.len() <= max` throughout.
    loop {
        let room = max - out.len();
        // Only as far as the room left: a literal longer than that is over, wherever it ends.
        let window = &rest.as_bytes()[..rest.len().min(room.saturating_add(1))];
        let Some(i) = window.iter().position(|&b| b == b'$') else {
            if rest.len() > room {
                return Ok(None);
            }
            out.push_str(rest);
            return Ok(Some(out));
        };
        // `$` is ASCII: `i` is a char boundary, and `i <= room`.
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let j = after.find('$').ok_or(TemplateError::Unterminated)?;
        let ident = &after[..j];
        rest = &after[j + 1..];
        let room = max - out.len();
        if ident.is_empty() {
            if room == 0 {
                return Ok(None);
            }
            out.push('$');
            continue;
        }
        let (name, format) = match ident.find('%') {
            Some(k) => (&ident[..k], Some(&ident[k..])),
            None => (ident, None),
        };
        let value = match name {
            "RepresentationID" => {
                if format.is_some() {
                    return Err(TemplateError::BadFormat(ident.to_string()));
                }
                if vars.representation_id.len() > room {
                    return Ok(None);
                }
                out.push_str(vars.representation_id);
                continue;
            }
            "Number" => vars.number.ok_or(TemplateError::Missing("Number"))?,
            "Time" => vars.time.ok_or(TemplateError::Missing("Time"))?,
            "Bandwidth" => vars.bandwidth.ok_or(TemplateError::Missing("Bandwidth"))?,
            "SubNumber" => return Err(TemplateError::Missing("SubNumber")),
            other => return Err(TemplateError::Unknown(other.to_string())),
        };
        let width = match format {
            None => 0,
            Some(f) => parse_width(f).ok_or_else(|| TemplateError::BadFormat(f.to_string()))?,
        };
        let value = format!("{value:0width$}");
        if value.len() > room {
            return Ok(None);
        }
        out.push_str(&value);
    }
}

/// `%d`, `%5d`, `%05d` -> width. Padding is with zeros either way (as dash.js does).
fn parse_width(f: &str) -> Option<usize> {
    let digits = f.strip_prefix('%')?.strip_suffix('d')?;
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 3 {
        return None;
    }
    let w: usize = digits.parse().ok()?;
    (w <= MAX_WIDTH).then_some(w)
}

/// True when the template uses `$Number$` or `$Time$` (so it addresses many segments).
pub fn is_indexed(template: &str) -> bool {
    template.contains("$Number") || template.contains("$Time")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v() -> Vars<'static> {
        Vars {
            representation_id: "v1",
            bandwidth: Some(160000),
            number: Some(7),
            time: Some(49152),
        }
    }

    #[test]
    fn identifiers_and_widths() {
        let e = |t: &str| expand(t, &v());
        assert_eq!(
            e("c-$RepresentationID$-$Number%05d$.m4s").as_deref(),
            Ok("c-v1-00007.m4s")
        );
        assert_eq!(e("$Time$.m4s").as_deref(), Ok("49152.m4s"));
        assert_eq!(e("$Bandwidth$/$Number$").as_deref(), Ok("160000/7"));
        assert_eq!(e("a$$b").as_deref(), Ok("a$b"));
        assert_eq!(e("$Number%d$").as_deref(), Ok("7"));
        assert_eq!(e("$Number%3d$").as_deref(), Ok("007"));
        assert!(matches!(e("$Nope$"), Err(TemplateError::Unknown(_))));
        assert!(matches!(e("$Number"), Err(TemplateError::Unterminated)));
        assert!(matches!(
            e("$Number%0999d$"),
            Err(TemplateError::BadFormat(_))
        ));
        let init = Vars {
            representation_id: "a",
            ..Vars::default()
        };
        assert!(matches!(
            expand("$Number$", &init),
            Err(TemplateError::Missing("Number"))
        ));
    }

    /// A bounded expansion is the unbounded one when that fits, else `None`, having copied no
    /// more than the bound of a long literal.
    #[test]
    fn a_bounded_expansion_stops_at_its_bound() {
        let e = |t: &str, max| expand_within(t, &v(), max);
        assert_eq!(e("s-$Number%05d$.m4s", 14), Ok(Some("s-00007.m4s".into())));
        assert_eq!(e("s-$Number%05d$.m4s", 10), Ok(None));
        assert_eq!(
            e("$RepresentationID$/$Time$", 8),
            Ok(Some("v1/49152".into()))
        );
        assert_eq!(e("$RepresentationID$/$Time$", 7), Ok(None));
        assert_eq!(e("a$$b", 2), Ok(None));
        let long = format!("$Number$/{}.m4s", "L".repeat(3 << 20));
        assert_eq!(e(&long, 8 << 10), Ok(None));
        assert!(matches!(e("$Nope$", 100), Err(TemplateError::Unknown(_))));
    }

    proptest! {
        #[test]
        fn never_panics_and_plain_text_is_kept(t in ".{0,40}") {
            let r = expand(&t, &v());
            if !t.contains('$') {
                prop_assert_eq!(r.as_deref(), Ok(t.as_str()));
            }
        }

        #[test]
        fn a_bounded_expansion_is_the_expansion_or_none(t in "[a$NumberTime%0-9]{0,40}", max in 0usize..30) {
            match (expand(&t, &v()), expand_within(&t, &v(), max)) {
                (Ok(full), Ok(Some(b))) => prop_assert!(full == b && b.len() <= max),
                (Ok(full), Ok(None)) => prop_assert!(full.len() > max),
                (Err(_), _) => {}
                (Ok(full), Err(e)) => prop_assert!(false, "{full:?} but bounded: {e}"),
            }
        }
    }
}
